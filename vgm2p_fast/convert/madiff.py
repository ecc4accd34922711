"""MADiff's re-hosted OG-MARL data: a quality folder of ``.npy`` files.

Follows zbzhu99/madiff: ``scripts/transform_og_marl_dataset.py`` ``main`` (which writes the
folder from OG-MARL's tfrecords) and the loaders that read it,
``diffuser/datasets/smac_env.py`` and ``diffuser/datasets/mamujoco.py`` ``sequence_dataset``.

Folder ``data/<smac|mamujoco>/<map>/<quality>/``, episodes concatenated along the rows:

- ``obs.npy [T, N, N + O]``: the agents' observations with **one-hot agent ids prepended**
  (``add_agent_id_to_obs = True``: ``np.concatenate([agent_ids, obs], -1)``). The ids are
  checked and stripped: our policy adds its own agent embedding, and a copy in the data would
  make obs_dim depend on N.
- ``actions.npy``: ``[T, N]`` action ids (SMAC) or ``[T, N, A]`` continuous (MaMuJoCo).
- ``rewards.npy [T, N]`` per agent (OG-MARL gives each agent the team reward: team rule).
- ``discounts.npy [T, N]``: the transform ends an episode when ``discounts[-1, 0] == 0``
  (termination) or at the environment's ``max_episode_length`` (time limit), so an episode
  whose last row has discount 0 for agent 0 is a terminal, any other a truncation. MADiff's
  own loaders ignore this file and mark every episode end terminal; without the file the end
  is a terminal unless ``--episode-limit N`` says an episode of exactly N rows was cut.
- ``path_lengths.npy [E]``: rows per episode, summing to T.
- SMAC only: ``legals.npy [T, N, K]`` -> ``avail_actions``; ``states.npy [T, S]`` -> ``states``.

Default label: ``smac_v1/<map>`` (MADiff's SMAC is SMAC v1, as OG-MARL's vaults name it) or
``<env>/<map>``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..datasets import DatasetError
from ._episodes import (
    NpyRows,
    Options,
    Rows,
    Source,
    check_rows,
    kept_rows,
    npy,
    require_episodes,
    stream,
    team_reward,
)

_FILES = ("obs.npy", "actions.npy", "rewards.npy", "path_lengths.npy")


def detect(path: Path) -> bool:
    return path.is_dir() and all((path / f).is_file() for f in ("obs.npy", "path_lengths.npy"))


def _ends(path: Path, lengths: np.ndarray, rows: int, discounts: NpyRows | None,
          limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``[T]`` terminals/truncations at the last row of each episode of ``lengths``."""
    if lengths.ndim != 1 or lengths.size == 0 or (lengths < 1).any():
        raise DatasetError(path / "path_lengths.npy", "path_lengths", "[E] positive episode "
                           "lengths", f"shape {lengths.shape}, min {lengths.min(initial=0)}")
    if int(lengths.sum()) != rows:
        raise DatasetError(path / "path_lengths.npy", "path_lengths", f"lengths summing to the "
                           f"{rows} rows of obs.npy", f"sum {int(lengths.sum())}")
    last = np.cumsum(lengths) - 1
    if discounts is not None:
        ended = np.asarray(discounts)[last, 0] == 0  # the transform: int(d[-1, 0]) == 0
    elif limit is not None:
        if (lengths > limit).any():
            raise DatasetError(path / "path_lengths.npy", "path_lengths", f"episodes of at "
                               f"most {limit} rows (--episode-limit)",
                               f"an episode of {int(lengths.max())} rows")
        ended = lengths < limit
    else:
        ended = np.ones(lengths.shape, bool)  # MADiff's loaders: terminals[-1] = True
    terminals, truncations = np.zeros(rows, bool), np.zeros(rows, bool)
    terminals[last[ended]] = True
    truncations[last[~ended]] = True
    return terminals, truncations


def open_source(path: Path, opts: Options) -> Source:
    """Open a MADiff quality folder (memory-mapped: rows are read chunk by chunk)."""
    obs, actions, rewards, lengths = (npy(path, f) for f in _FILES)
    if obs.ndim != 3:
        raise DatasetError(path / "obs.npy", "obs", "shape [T, N, N + obs_dim]",
                           f"shape {obs.shape}")
    t, n = obs.shape[:2]
    if obs.shape[2] <= n:
        raise DatasetError(path / "obs.npy", "obs", f"{n} one-hot agent-id columns then the "
                           "observation", f"shape {obs.shape}")
    has = {f: (path / f).is_file() for f in ("discounts.npy", "legals.npy", "states.npy")}
    if has["discounts.npy"] and opts.episode_limit is not None:
        raise ValueError("--episode-limit: expected none (discounts.npy marks which episodes "
                         f"terminated), found {opts.episode_limit}")
    discounts = npy(path, "discounts.npy") if has["discounts.npy"] else None
    if discounts is not None:
        check_rows(path / "discounts.npy", "discounts", discounts, t, 2, "[T, N] discounts")
    check_rows(path / "rewards.npy", "rewards", rewards, t, 2, "[T, N] per-agent rewards")
    discrete = has["legals.npy"]
    check_rows(path / "actions.npy", "actions", actions, t, 2 if discrete else 3,
               "[T, N] action ids" if discrete else "[T, N, A] actions")
    extra = {}
    if discrete:
        extra["avail_actions"] = npy(path, "legals.npy")
        check_rows(path / "legals.npy", "legals", extra["avail_actions"], t, 3,
                   "[T, N, n_actions] legal-action masks")
    if has["states.npy"]:
        extra["states"] = npy(path, "states.npy")
        check_rows(path / "states.npy", "states", extra["states"], t, 2, "[T, S] states")
    terminals, truncations = _ends(path, np.asarray(lengths), t, discounts, opts.episode_limit)
    require_episodes(path, kept_rows(terminals, truncations), "path_lengths")
    eye = np.eye(n, dtype=obs.dtype)

    def read(a: int, b: int) -> Rows:
        x = np.asarray(obs[a:b])
        bad = (x[:, :, :n] != eye).any(axis=2)
        if bad.any():
            r, i = (int(j) for j in np.argwhere(bad)[0])
            raise DatasetError(path / "obs.npy", "obs", f"one-hot agent ids in the first {n} "
                               "columns (transform_og_marl_dataset.py prepends them)",
                               f"row {a + r}, agent {i}: {x[r, i, :n].tolist()}")
        act = np.asarray(actions[a:b])
        if discrete and act.dtype.kind == "f":  # ids saved as floats: exact integers only
            if (act != np.round(act)).any():
                raise DatasetError(path / "actions.npy", "actions", "integer action ids "
                                   "(legals.npy makes this a discrete dataset)",
                                   f"non-integer values such as {act[act != np.round(act)][0]}")
            act = act.astype(np.int64)
        rows = {"observations": x[:, :, n:], "actions": act,
                "rewards": team_reward(path / "rewards.npy", "rewards", rewards[a:b],
                                       opts.reward, a)}
        rows.update({k: np.asarray(v[a:b]) for k, v in extra.items()})
        return rows

    family, scenario = path.parent.parent.name, path.parent.name
    row_bytes = sum(int(np.prod(x.shape[1:])) * x.dtype.itemsize
                    for x in (obs, actions, rewards, *extra.values()))
    return Source(path=path, env=f"{'smac_v1' if family == 'smac' else family}/{scenario}",
                  chunks=stream(read, terminals, truncations), rows=t, row_bytes=row_bytes,
                  n_actions=int(extra["avail_actions"].shape[2]) if discrete else None,
                  notes=[f"stripped {n} one-hot agent-id columns from obs"])
