"""Read OG-MARL datasets (flashbax Vaults) and convert them to our HDF5 format.

On-disk layout (``flashbax.vault.Vault``, format versions 1.x, as OG-MARL distributes them):

- ``<scenario>.vlt/<uid>/`` holds one dataset (OG-MARL's uids: ``Good``, ``Medium``, ``Poor``,
  ``Replay``, ...).
- ``<uid>/metadata.json``: ``{"version": 1.x, "structure_shape": tree, "structure_dtype": tree,
  ...}`` where ``tree`` mirrors the experience dict (``observations``, ``actions``, ``rewards``,
  ``terminals``, ``truncations``, ``infos: {legals, state}``) with a shape string and a numpy
  dtype name per leaf.
- ``<uid>/`` is also an OCDBT key-value store (``manifest.ocdbt``, ``d/``) read through
  tensorstore. Each leaf is a zarr (v2) array named by its path with a trailing dot
  (``observations.``, ``infos.legals.``), shaped ``[B, 10**13, ...]``: B recorded streams, and
  a time axis allocated up front. The ``vault_index`` array (int32 ``[1]``) says how many time
  steps were written.

Conversion (one row per time step, streams concatenated): ``observations [B, T, N, O]``,
``actions [B, T, N]`` (int: discrete) or ``[B, T, N, A]`` (float: continuous),
``rewards [B, T, N]``, ``terminals``/``truncations [B, T, N]`` (a step ends the episode when
every agent's flag is set, as OG-MARL's own return computation reads them),
``infos.state [B, T, S]`` -> ``states``, ``infos.legals [B, T, N, K]`` -> ``avail_actions``.
Rows after the last episode end of a stream (an episode the recorder had not finished) are
dropped: our format refuses an open last episode. Checked against a vault written by flashbax
0.1.3's ``Vault`` itself: the converted arrays equal the recorded ones.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .datasets import DatasetError, load_dataset, write_dataset

METADATA_FILE = "metadata.json"
INSTALL_HINT = "pip install 'vgm2p_fast[ogmarl]' (or: pip install tensorstore)"
REWARD_MODES = ("team", "mean", "sum")


def _tensorstore() -> Any:
    try:
        import tensorstore
    except ImportError as exc:
        raise ImportError(f"reading OG-MARL vaults needs tensorstore ({exc}); install it with "
                          f"`{INSTALL_HINT}`") from exc
    return tensorstore


def find_vault_dir(vault: str | os.PathLike, uid: str | None = None) -> Path:
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


def read_vault(vault: str | os.PathLike, uid: str | None = None) -> dict[str, np.ndarray]:
    """Every leaf of one vault dataset, ``[B, T_written, ...]`` numpy arrays keyed by path
    without the trailing dot (``observations``, ``infos.legals``)."""
    ts = _tensorstore()
    base = find_vault_dir(vault, uid).resolve()
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
                               str(exc)) from None

    written = int(open_array("vault_index").read().result()[0])
    if written < 1:
        raise DatasetError(base, "vault_index", "at least one written time step", str(written))
    return {name[:-1]: np.asarray(open_array(name)[:, :written].read().result())
            for name in _leaves(structure)}


def _agent_flags(src: Path, name: str, x: np.ndarray, rank: int) -> np.ndarray:
    """[B, T] bool from a [B, T] or per-agent [B, T, N] flag (set when every agent's is)."""
    if x.ndim not in (rank, rank + 1):
        raise DatasetError(src, name, "shape [B, T] or [B, T, N]", f"shape {x.shape}")
    x = x != 0
    return x.all(axis=-1) if x.ndim == rank + 1 else x


def _team_reward(src: Path, r: np.ndarray, mode: str) -> np.ndarray:
    if r.ndim == 2:
        return r
    if r.ndim != 3:
        raise DatasetError(src, "rewards", "shape [B, T] or [B, T, N]", f"shape {r.shape}")
    if mode == "mean":
        return r.mean(axis=-1)
    if mode == "sum":
        return r.sum(axis=-1)
    differ = (r != r[..., :1]).any(axis=-1)
    if differ.any():
        b, t = (int(i) for i in np.argwhere(differ)[0])
        raise DatasetError(src, "rewards", "the same reward for every agent (a team reward; "
                           "--reward mean or sum combines per-agent rewards)",
                           f"{int(differ.sum())} steps where agents differ (first: stream {b}, "
                           f"step {t}: {r[b, t].tolist()})")
    return r[..., 0]


def convert_vault(
    vault: str | os.PathLike,
    out: str | os.PathLike,
    *,
    env: str,
    uid: str | None = None,
    action_low: list[float] | None = None,
    action_high: list[float] | None = None,
    reward: str = "team",
    compression: str | None = "gzip",
) -> str:
    """Convert one OG-MARL vault dataset to a validated HDF5 file at ``out``; returns a report.

    ``env``: our environment spec (``mamujoco/HalfCheetah-2x3``, ``smax/3m``); it must describe
    the environment the vault was recorded in (obs/action layout included), which this cannot
    check. ``action_low``/``action_high``: the environment bounds the vault's continuous actions
    are expressed in; actions are rescaled to ``[-1, 1]`` as ``2 (a - low) / (high - low) - 1``
    (default: already in ``[-1, 1]``). ``reward``: ``team`` (agents must share the reward),
    ``mean`` or ``sum`` over agents.
    """
    if reward not in REWARD_MODES:
        raise ValueError(f"reward: expected one of {REWARD_MODES}, found {reward!r}")
    src = find_vault_dir(vault, uid)
    leaves = read_vault(src)
    for key in ("observations", "actions", "rewards", "terminals", "truncations"):
        if key not in leaves:
            raise DatasetError(src, key, "a leaf of the vault's experience",
                               f"leaves {sorted(leaves)}")
    obs = leaves["observations"]
    if obs.ndim != 4:
        raise DatasetError(src, "observations", "shape [B, T, N, obs_dim]", f"shape {obs.shape}")
    terminals = _agent_flags(src, "terminals", leaves["terminals"], 2)
    truncations = _agent_flags(src, "truncations", leaves["truncations"], 2)
    rewards = _team_reward(src, leaves["rewards"], reward)
    actions = leaves["actions"]
    discrete = actions.dtype.kind in "iu"
    extra: dict[str, np.ndarray] = {}  # optional per-row datasets
    bounds: dict[str, np.ndarray] = {}
    if discrete:
        if "infos.legals" not in leaves:
            raise DatasetError(src, "infos.legals", "the availability mask of discrete actions "
                               "(it gives n_actions)", f"leaves {sorted(leaves)}")
        extra["avail_actions"] = leaves["infos.legals"]
    elif action_low is not None or action_high is not None:
        if action_low is None or action_high is None:
            raise ValueError("action_low, action_high: expected both or neither, found one")
        low = np.asarray(action_low, np.float64)
        high = np.asarray(action_high, np.float64)
        actions = 2.0 * (actions - low) / (high - low) - 1.0
        bounds.update(action_low=low, action_high=high)
    if "infos.state" in leaves:
        extra["states"] = leaves["infos.state"]

    # Keep each stream up to its last episode end; concatenate the streams.
    done = terminals | truncations
    keep = [int(np.flatnonzero(d)[-1]) + 1 if d.any() else 0 for d in done]
    if not any(keep):
        raise DatasetError(src, "terminals/truncations", "at least one finished episode",
                           "no step with every agent's terminal or truncation set")

    def rows(x: np.ndarray) -> np.ndarray:
        return np.concatenate([x[b, :k] for b, k in enumerate(keep)])

    write_dataset(out, observations=rows(obs), actions=rows(actions), rewards=rows(rewards),
                  terminals=rows(terminals), truncations=rows(truncations), env=env,
                  compression=compression, **{k: rows(v) for k, v in extra.items()}, **bounds,
                  source_vault=str(src), converted_by="vgm2p data convert")
    dropped = done.shape[0] * done.shape[1] - sum(keep)
    summary = load_dataset(out).summary()
    return (f"wrote {out}: {summary['transitions']:,} transitions, {summary['episodes']:,} "
            f"episodes, return mean {summary['return_mean']:.4g} (from {src}; dropped "
            f"{dropped} steps of unfinished episodes)")
