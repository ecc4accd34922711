"""Small sources in each layout ``vgm2p data convert`` reads, written as the source projects
write them (the readers' docstrings cite the code), plus what the converted rows must be.

Every writer returns ``want``: the rows the conversion must produce (``observations``,
``actions``, ``rewards``, ``terminals``, ``truncations`` and the optional fields), computed
here from the raw arrays independently of the readers.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import torch

TIME_AXIS = int(10e12)  # flashbax preallocates a vault's time axis to this length


def _ends(lengths: list[int], terminal: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    """[T] flags: each episode's last row is a terminal or a truncation."""
    last = np.cumsum(lengths) - 1
    term, trunc = np.zeros(last[-1] + 1, bool), np.zeros(last[-1] + 1, bool)
    term[last[np.array(terminal)]] = True
    trunc[last[~np.array(terminal)]] = True
    return term, trunc


# ---------------------------------------------------------------------------------- vault
def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for key, sub in tree.items():
        if isinstance(sub, dict):
            out.update(_flatten(sub, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}."] = sub
    return out


def _tree_map(tree: dict, fn) -> dict:
    return {k: _tree_map(v, fn) if isinstance(v, dict) else fn(v) for k, v in tree.items()}


def write_vault(folder: Path, experience: dict, garbage_rows: int = 3,
                buffer_len: int = 64) -> None:
    """Write ``experience`` (a tree of ``[B, T, ...]`` arrays) as flashbax's ``Vault`` does
    (tensorstore, zarr in OCDBT), plus ``garbage_rows`` of -1 after the written index that a
    reader must ignore. As flashbax 0.1.3 does, the metadata records the recording buffer's
    shapes (time axis ``buffer_len``), not what was written; ``vault_index`` says that."""
    import tensorstore as ts

    folder.mkdir(parents=True)
    meta = {"version": 1.2,
            "structure_shape": _tree_map(experience,
                                         lambda a: str((a.shape[0], buffer_len, *a.shape[2:]))),
            "structure_dtype": _tree_map(experience, lambda a: a.dtype.name),
            "recorded_with": "test"}
    (folder / "metadata.json").write_text(json.dumps(meta))

    def spec(name: str) -> dict:
        return {"driver": "zarr", "metadata": {"compressor": {"id": "gzip", "level": 5}},
                "kvstore": {"driver": "ocdbt", "base": f"file://{folder}", "path": name}}

    written = 0
    for name, arr in _flatten(experience).items():
        b, t = arr.shape[:2]
        store = ts.open(spec(name), shape=(b, TIME_AXIS, *arr.shape[2:]), dtype=arr.dtype.name,
                        create=True).result()
        store[:, :t].write(arr).result()
        junk = np.full((b, garbage_rows, *arr.shape[2:]), -1).astype(arr.dtype)
        store[:, t:t + garbage_rows].write(junk).result()
        written = t
    index = ts.open({"driver": "zarr", "kvstore": {"driver": "ocdbt", "base": f"file://{folder}",
                                                   "path": "vault_index"}},
                    dtype="int32", shape=(1,), create=True).result()
    index.write(written).result()


def smac_vault_experience(seed: int = 0, b: int = 1, t: int = 30, n: int = 3,
                          k: int = 5) -> dict:
    """An OG-MARL smac_v1-like experience: episodes end at steps 9 and 19, 20.. unfinished."""
    rng = np.random.default_rng(seed)
    legals = rng.random((b, t, n, k)) < 0.6
    actions = rng.integers(0, k, (b, t, n)).astype(np.int32)
    np.put_along_axis(legals, actions[..., None].astype(np.int64), True, axis=-1)
    team = rng.normal(size=(b, t, 1)).astype(np.float32)
    terminals = np.zeros((b, t, n), np.float32)
    terminals[:, [9, 19]] = 1.0
    terminals[:, 4, 0] = 1.0  # one agent's flag alone (a dead unit) does not end the episode
    return {"observations": rng.normal(size=(b, t, n, 6)).astype(np.float32),
            "actions": actions,
            "rewards": np.repeat(team, n, axis=-1),
            "terminals": terminals,
            "truncations": np.zeros((b, t, n), np.float32),
            "infos": {"legals": legals.astype(np.float32),
                      "state": rng.normal(size=(b, t, 8)).astype(np.float32)}}


# --------------------------------------------------------------------------------- madiff
def write_madiff(folder: Path, seed: int = 0, discrete: bool = True, n: int = 3,
                 lengths: tuple[int, ...] = (7, 12, 5), terminal: tuple[bool, ...] = (True,
                 False, True), discounts: bool = True) -> dict:
    """A MADiff quality folder as ``scripts/transform_og_marl_dataset.py`` writes it."""
    rng = np.random.default_rng(seed)
    t, o, k, a = sum(lengths), 5, 4, 2
    folder.mkdir(parents=True)
    obs = rng.normal(size=(t, n, o)).astype(np.float32)
    ids = np.broadcast_to(np.eye(n, dtype=np.float32), (t, n, n))
    np.save(folder / "obs.npy", np.concatenate([ids, obs], axis=-1))
    team = rng.normal(size=(t, 1)).astype(np.float32)
    np.save(folder / "rewards.npy", np.repeat(team, n, axis=1))
    disc = np.ones((t, n), np.float32)
    last = np.cumsum(lengths) - 1
    disc[last[np.array(terminal)]] = 0.0
    if discounts:
        np.save(folder / "discounts.npy", disc)
    np.save(folder / "path_lengths.npy", np.array(lengths))
    want = {"observations": obs, "rewards": team[:, 0]}
    if discrete:
        legals = rng.random((t, n, k)) < 0.5
        actions = rng.integers(0, k, (t, n))
        np.put_along_axis(legals, actions[..., None], True, axis=-1)
        np.save(folder / "actions.npy", actions)
        np.save(folder / "legals.npy", legals.astype(np.float32))
        states = rng.normal(size=(t, 9)).astype(np.float32)
        np.save(folder / "states.npy", states)
        want.update(actions=actions, avail_actions=legals, states=states)
    else:
        actions = rng.uniform(-1, 1, (t, n, a)).astype(np.float32)
        np.save(folder / "actions.npy", actions)
        want["actions"] = actions
    want["terminals"], want["truncations"] = _ends(list(lengths), list(terminal))
    return want


# ----------------------------------------------------------------------------------- omar
def write_omar(folder: Path, seed: int = 0, t: int = 60, obs_dims: tuple[int, ...] = (4, 6, 5),
               act_dim: int = 2, shared_reward: bool = False) -> dict:
    """An OMAR ``seed_<k>_data`` folder as ``utils/buffer.py`` ``load_batch_data`` reads it:
    per-agent files, agents of different observation sizes, MPE's dones never set."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    n = len(obs_dims)
    obs = [rng.normal(size=(t, d)).astype(np.float32) for d in obs_dims]
    nxt = [rng.normal(size=(t, d)).astype(np.float32) for d in obs_dims]
    acs = [rng.uniform(-1, 1, (t, act_dim)).astype(np.float32) for _ in obs_dims]
    rews = rng.normal(size=(t, n)).astype(np.float32)
    if shared_reward:
        rews[:] = rews[:, :1]
    for i in range(n):
        np.save(folder / f"obs_{i}.npy", obs[i])
        np.save(folder / f"next_obs_{i}.npy", nxt[i])
        np.save(folder / f"acs_{i}.npy", acs[i])
        np.save(folder / f"rews_{i}.npy", rews[:, i])
        np.save(folder / f"dones_{i}.npy", np.zeros(t, np.float32))
    width = max(obs_dims)

    def pad(parts: list[np.ndarray]) -> np.ndarray:
        return np.stack([np.pad(p, ((0, 0), (0, width - p.shape[1]))) for p in parts], axis=1)

    return {"observations": pad(obs), "next_observations": pad(nxt),
            "actions": np.stack(acs, axis=1), "rewards_per_agent": rews}


# ---------------------------------------------------------------------------------- omiga
def write_omiga(path: Path, seed: int = 0, lengths: tuple[int, ...] = (10, 6, 10, 4),
                limit: int = 10, n: int = 2) -> dict:
    """An OMIGA MaMuJoCo ``.hdf5`` as ``datasets/offline_dataset.py`` reads it; ``d`` set at
    each episode's last row (the time limit included), per-agent copies in columns; the last
    ``lengths[-1]`` rows are an unfinished episode."""
    rng = np.random.default_rng(seed)
    t, o, a = sum(lengths), 7, 3
    path.parent.mkdir(parents=True, exist_ok=True)
    d = np.zeros((t, n), np.float32)
    last = np.cumsum(lengths) - 1
    d[last[:-1]] = 1.0
    o_arr = rng.normal(size=(t, n, o)).astype(np.float32)
    s_arr = rng.normal(size=(t, n, o)).astype(np.float32)
    a_arr = rng.uniform(-1, 1, (t, n, a)).astype(np.float32)
    r_arr = rng.normal(size=(t, 1)).astype(np.float32)
    with h5py.File(path, "w") as f:
        for key, val in (("s", s_arr), ("o", o_arr), ("a", a_arr), ("r", r_arr), ("d", d)):
            f.create_dataset(key, data=val)
    keep = t - lengths[-1]
    term, trunc = _ends(list(lengths[:-1]), [length < limit for length in lengths[:-1]])
    return {"observations": o_arr[:keep], "actions": a_arr[:keep], "rewards": r_arr[:keep, 0],
            "states": s_arr[:keep].reshape(keep, -1), "terminals": term, "truncations": trunc}


# ----------------------------------------------------------------------------- omiga-smac
def write_omiga_smac(folder: Path, seed: int = 0, lengths: tuple[int, ...] = (5, 8, 3),
                     n: int = 3, k: int = 6) -> dict:
    """Per-episode files as OMIGA's SMAC ``framework/buffer.py`` ``ReplayBuffer.insert``
    builds them (``[g, o, a, r, d, ava]`` per agent and step) and ``torch.save`` stores them."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    want: dict[str, list] = {k_: [] for k_ in ("observations", "actions", "rewards", "states",
                                               "avail_actions")}
    for e, length in enumerate(lengths):
        g = rng.normal(size=(length, n, 4)).astype(np.float32)
        o = rng.normal(size=(length, n, 5)).astype(np.float32)
        ava = rng.random((length, n, k)) < 0.5
        act = rng.integers(0, k, (length, n))
        np.put_along_axis(ava, act[..., None], True, axis=-1)
        r = rng.normal(size=length).astype(np.float32)
        episode = [[[g[t, i], o[t, i], [int(act[t, i])], np.array([r[t]], np.float32),
                     bool(t == length - 1), ava[t, i].astype(np.float32)]
                    for t in range(length)] for i in range(n)]
        torch.save(episode, folder / f"episode_{e:03d}.pt")
        for key, val in (("observations", o), ("actions", act), ("rewards", r),
                         ("states", g.reshape(length, -1)), ("avail_actions", ava)):
            want[key].append(val)
    out = {key: np.concatenate(v) for key, v in want.items()}
    out["terminals"], out["truncations"] = _ends(list(lengths), [True] * len(lengths))
    return out


def assert_rows(ds, want: dict, skip: tuple[str, ...] = ()) -> None:
    """The loaded dataset ``ds`` holds exactly the rows ``want`` (bit for bit)."""
    for key, val in want.items():
        if key in skip:
            continue
        got = getattr(ds, key).numpy()
        np.testing.assert_array_equal(got, np.asarray(val), err_msg=key)
