"""OG-MARL datasets: flashbax Vaults (``<scenario>.vlt/<uid>/``), read with tensorstore.

Follows ``flashbax/vault/vault.py`` (instadeepai/flashbax): ``Vault.__init__`` (metadata,
version 1.x), ``Vault._get_base_spec``/``_init_leaf`` (one zarr array per leaf in an OCDBT
store), ``_path_to_ds_name`` (leaf ``infos.legals`` is stored as ``"infos.legals."``) and
``Vault.read`` (time steps ``[0, vault_index)``); and OG-MARL's use of it
(instadeepai/og-marl): ``og_marl/replay_buffers.py`` ``FlashbaxReplayBuffer.add`` (the
experience dict) and ``og_marl/vault_utils/analyse_vault.py`` ``calculate_returns`` (a step ends
the episode when every agent's flag is set: ``.all(axis=-1)``).

On disk: ``<uid>/metadata.json`` = ``{"version": 1.x, "structure_shape": tree,
"structure_dtype": tree}``; each leaf a zarr (v2) array ``[B, 10**13, ...]`` (B recorded
streams, a time axis allocated up front); ``vault_index`` (int32 ``[1]``) counts the steps
written. OG-MARL vaults live at ``vaults/<source>/<env>/<scenario>.vlt/<uid>``
(``og_marl/vault_utils/download_vault.py``), so the default label is ``<env>/<scenario>``:
``smac_v1/3m``, ``mamujoco/2halfcheetah``.

Rows: streams concatenated, each cut after its last episode end. ``observations [B, T, N, O]``,
``actions [B, T, N]`` (int: discrete) or ``[B, T, N, A]``, ``rewards [B, T, N]`` (team rule),
``terminals``/``truncations [B, T, N]`` (terminal wins), ``infos.state`` -> ``states``,
``infos.legals`` -> ``avail_actions``. OG-MARL zero-pads the observations of heterogeneous
agents (``wrapped_environments/wrappers.py`` ``PadObsandActs``) and some wrappers pad with
-inf (``flatland_wrapper.py``): -inf becomes 0. Only tensorstore is needed, not JAX.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets import DatasetError
from ._episodes import (
    Options,
    Rows,
    Source,
    ends_from_flags,
    kept_rows,
    require_episodes,
    team_reward,
    windows,
    zero_neg_inf,
)

METADATA_FILE = "metadata.json"
INSTALL_HINT = "pip install 'vgm2p_fast[ogmarl]' (or: pip install tensorstore)"
_REQUIRED = ("observations", "actions", "rewards", "terminals", "truncations")


def _tensorstore() -> Any:
    try:
        import tensorstore
    except ImportError as exc:
        raise ImportError(f"reading OG-MARL vaults needs tensorstore ({exc}); install it with "
                          f"`{INSTALL_HINT}`") from exc
    return tensorstore


def detect(path: Path) -> bool:
    """A ``<uid>`` folder (``metadata.json``) or a vault holding ``<uid>`` folders."""
    return path.is_dir() and ((path / METADATA_FILE).is_file() or path.suffix == ".vlt"
                              or any((p / METADATA_FILE).is_file() for p in path.iterdir()))


def find_vault_dir(vault: str | Path, uid: str | None = None) -> Path:
    """The folder of one vault dataset: ``vault`` itself when it holds ``metadata.json``,
    else ``vault/<uid>`` (``uid`` may be omitted when the vault holds a single dataset)."""
    root = Path(vault).expanduser()
    if (root / METADATA_FILE).is_file():
        if uid is not None and uid != root.name:
            raise DatasetError(root, "uid", f"{root.name!r} (the dataset this folder is)",
                               repr(uid))
        return root
    if not root.is_dir():
        raise DatasetError(root, "vault", "a flashbax vault folder (<scenario>.vlt or one of "
                           "its <uid> folders)", "no such directory")
    uids = sorted(p.name for p in root.iterdir() if (p / METADATA_FILE).is_file())
    if uid is not None:
        if uid not in uids:
            raise DatasetError(root, "uid", f"one of {uids}", repr(uid))
        return root / uid
    if len(uids) != 1:
        want = "--uid naming one of " + ", ".join(uids) if uids else f"<uid>/{METADATA_FILE}"
        raise DatasetError(root, "uid", want, f"{len(uids)} datasets in the vault")
    return root / uids[0]


def _leaves(tree: Any, prefix: str = "") -> list[str]:
    """Leaf paths of the metadata tree, named as flashbax names their arrays (``a.b.``)."""
    if isinstance(tree, dict):
        return [leaf for key, sub in tree.items() for leaf in _leaves(sub, f"{prefix}{key}.")]
    return [prefix]


def open_vault(base: Path) -> tuple[dict[str, Any], int]:
    """Every leaf of one vault dataset as an open tensorstore (``[B, 10**13, ...]``, keyed by
    path without the trailing dot: ``observations``, ``infos.legals``) and the steps written."""
    ts = _tensorstore()
    base = base.resolve()
    try:
        meta = json.loads((base / METADATA_FILE).read_text())
        structure = meta["structure_shape"]
        version = float(meta["version"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(base / METADATA_FILE, "metadata", "flashbax vault metadata with "
                           "'version' and 'structure_shape'",
                           f"{type(exc).__name__}: {exc}") from None
    if int(version) != 1:
        raise DatasetError(base / METADATA_FILE, "version", "a flashbax vault version 1.x",
                           str(version))

    def open_array(name: str) -> Any:
        spec = {"driver": "zarr",
                "kvstore": {"driver": "ocdbt", "base": f"file://{base}", "path": name}}
        try:
            return ts.open(spec, open=True, read=True).result()
        except ValueError as exc:  # tensorstore reports missing/corrupt arrays as ValueError
            raise DatasetError(base, name, "a readable zarr array in the vault's OCDBT store",
                               " ".join(str(exc).split())) from None

    written = int(open_array("vault_index").read().result()[0])
    if written < 1:
        raise DatasetError(base, "vault_index", "at least one written time step", str(written))
    return {name[:-1]: open_array(name) for name in _leaves(structure)}, written


def _flag(base: Path, name: str, store: Any, written: int) -> np.ndarray:
    """``[B, T]`` bool from a ``[B, T]`` or per-agent ``[B, T, N]`` flag (every agent's set)."""
    if len(store.shape) not in (2, 3):
        raise DatasetError(base, name, "shape [B, T] or [B, T, N]", f"shape {store.shape}")
    x = np.asarray(store[:, :written].read().result()) != 0
    return x.all(axis=-1) if x.ndim == 3 else x


def open_source(path: Path, opts: Options) -> Source:
    """Open a vault (``path``: ``<scenario>.vlt`` with ``opts.uid``, or a ``<uid>`` folder)."""
    if opts.episode_limit is not None:
        raise ValueError("--episode-limit: expected none for a vault (vaults store "
                         "truncations), found " + str(opts.episode_limit))
    base = find_vault_dir(path, opts.uid)
    leaves, written = open_vault(base)
    for key in _REQUIRED:
        if key not in leaves:
            raise DatasetError(base, key, "a leaf of the vault's experience",
                               f"leaves {sorted(leaves)}")
    obs = leaves["observations"]
    if len(obs.shape) != 4:
        raise DatasetError(base, "observations", "shape [B, T, N, obs_dim]",
                           f"shape {obs.shape}")
    actions = leaves["actions"]
    discrete = np.dtype(actions.dtype.numpy_dtype).kind in "iu"
    extra = {"states": "infos.state"}
    if discrete:
        if "infos.legals" not in leaves:
            raise DatasetError(base, "infos.legals", "the availability mask of discrete actions "
                               "(it gives n_actions)", f"leaves {sorted(leaves)}")
        extra["avail_actions"] = "infos.legals"
    extra = {ours: theirs for ours, theirs in extra.items() if theirs in leaves}

    # Flags are small ([B, T] bool): read them whole, then stream the rest.
    term, trunc = ends_from_flags(_flag(base, "terminals", leaves["terminals"], written),
                                  _flag(base, "truncations", leaves["truncations"], written))
    keep = [kept_rows(term[b], trunc[b]) for b in range(term.shape[0])]
    require_episodes(base, sum(keep), "terminals/truncations")
    dropped = term.size - sum(keep)
    notes = [f"dropped {dropped} steps of unfinished episodes"] if dropped else []
    padded = [0]  # -inf values zeroed, counted for the report (known once streamed)

    def read(b: int, lo: int, hi: int) -> Rows:
        def get(name: str) -> np.ndarray:
            return np.asarray(leaves[name][b, lo:hi].read().result())

        obs_rows, n = zero_neg_inf(get("observations"))
        rows = {"observations": obs_rows, "actions": get("actions"),
                "rewards": team_reward(base, "rewards", get("rewards"), opts.reward, lo)}
        for ours, theirs in extra.items():
            rows[ours], m = zero_neg_inf(get(theirs))
            n += m
        padded[0] += n
        rows["terminals"], rows["truncations"] = term[b, lo:hi], trunc[b, lo:hi]
        return rows

    def chunks(max_rows: int) -> Iterator[Rows]:
        for b, k in enumerate(keep):
            ends = np.flatnonzero(term[b, :k] | trunc[b, :k])
            for lo, hi in windows(ends, max_rows):
                yield read(b, lo, hi)
        if padded[0]:
            notes.append(f"replaced {padded[0]} -inf padding values by 0")

    row_bytes = sum(int(np.prod(s.shape[2:])) * np.dtype(s.dtype.numpy_dtype).itemsize
                    for s in leaves.values())
    return Source(path=base, env=_label(base), chunks=chunks, rows=sum(keep),
                  row_bytes=row_bytes, notes=notes, attrs={"source_uid": base.name})


def _label(base: Path) -> str:
    """``<env>/<scenario>`` from ``.../<env>/<scenario>.vlt/<uid>``."""
    vlt = base.parent
    scenario = vlt.name[:-4] if vlt.name.endswith(".vlt") else vlt.name
    return f"{vlt.parent.name}/{scenario}" if vlt.parent.name else scenario
