"""OMAR's datasets: a ``seed_<k>_data/`` folder of per-agent ``.npy`` files.

Follows ling-pan/OMAR ``utils/buffer.py`` ``ReplayBuffer.load_batch_data`` (the files and their
shapes) and ``main.py`` (``--dataset_dir``: ``datasets/<env_id>/<data_type>/seed_<k>_data``;
``--episode_length`` 25 for MPE), and MADiff's reader of the same files,
zbzhu99/madiff ``diffuser/datasets/mpe.py`` ``sequence_dataset`` (an episode ends when every
agent's done is set or after ``max_timestep`` steps, which is a timeout).

Per agent ``i`` (``0 .. N-1``, as many as ``obs_<i>.npy`` files): ``obs_<i>.npy [T, O_i]``,
``acs_<i>.npy [T, A_i]`` (continuous, in [-1, 1]: MPE's ``u_range`` 1), ``rews_<i>.npy [T]``,
``next_obs_<i>.npy [T, O_i]``, ``dones_<i>.npy [T]``; OMAR's MaMuJoCo data also has
``states_<i>.npy``/``next_states_<i>.npy [T, S]``, the same global state for every agent
(OMAR's ``MujocoMulti.get_state``), of which agent 0's is kept. Agents of different sizes are
zero-padded at the end. The data stores no truncation flag and MPE never sets done, so
episodes are cut every ``--episode-limit`` rows (default 25, OMAR's ``--episode_length``).
Rewards are per agent: OMAR's own evaluation averages them for ``simple_spread``, so
``--reward mean`` is the usual choice there (``team`` refuses rewards that differ).
Default label ``mpe/<env_id>`` for ``simple_*`` scenarios, else ``<env_id>``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..datasets import DatasetError
from ._episodes import (
    Options,
    Rows,
    Source,
    check_rows,
    finished_episodes,
    npy,
    pad_agents,
    stream,
    team_reward,
)

EPISODE_LIMIT = 25  # OMAR main.py --episode_length (MPE), MADiff mpe.py max_timestep


def detect(path: Path) -> bool:
    return path.is_dir() and all((path / f"{k}_0.npy").is_file() for k in ("obs", "acs", "rews"))


def open_source(path: Path, opts: Options) -> Source:
    """Open an OMAR ``seed_<k>_data`` folder (memory-mapped, read chunk by chunk)."""
    n = 0
    while (path / f"obs_{n}.npy").is_file():
        n += 1
    if n == 0:
        raise DatasetError(path, "obs_0.npy", "OMAR's per-agent files obs_<i>.npy", "none")
    names = ["obs", "acs", "rews", "next_obs", "dones"]
    if (path / "states_0.npy").is_file():
        names += ["states", "next_states"]
    per = {k: [npy(path, f"{k}_{i}.npy") for i in range(n)] for k in names}
    t = per["obs"][0].shape[0]
    for k, arrays in per.items():
        rank = 1 if k in ("rews", "dones") else 2
        for i, x in enumerate(arrays):
            check_rows(path / f"{k}_{i}.npy", k, x, t, rank,
                       f"[T{']' if rank == 1 else ', dim]'} like obs_0.npy")
    done = np.ones(t, bool)
    for x in per["dones"]:  # madiff mpe.py: the episode ends when done.all()
        done &= np.asarray(x) != 0
    limit = EPISODE_LIMIT if opts.episode_limit is None else opts.episode_limit
    terminals, truncations, notes = finished_episodes(path / "dones_0.npy", "dones", done,
                                                      limit)

    def read(a: int, b: int) -> Rows:
        rews = np.stack([np.asarray(x[a:b]) for x in per["rews"]], axis=1)
        rows = {"observations": pad_agents([x[a:b] for x in per["obs"]]),
                "actions": pad_agents([x[a:b] for x in per["acs"]]),
                "rewards": team_reward(path / "rews_0.npy", "rews", rews, opts.reward, a),
                "next_observations": pad_agents([x[a:b] for x in per["next_obs"]])}
        if "states" in per:
            rows["states"] = np.asarray(per["states"][0][a:b])
            rows["next_states"] = np.asarray(per["next_states"][0][a:b])
        return rows

    env_id = path.parent.parent.name
    row_bytes = sum(int(np.prod(x.shape[1:])) * x.dtype.itemsize
                    for arrays in per.values() for x in arrays)
    return Source(path=path, env=f"mpe/{env_id}" if env_id.startswith("simple_") else env_id,
                  chunks=stream(read, terminals, truncations), rows=terminals.size,
                  row_bytes=row_bytes, notes=notes)
