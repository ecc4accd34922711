"""OG-MARL vault conversion, on small vaults written here in flashbax's on-disk layout:
``metadata.json`` + an OCDBT store of zarr arrays ``[B, 10**13, ...]`` named ``<leaf path>.``,
and ``vault_index``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vgm2p_fast import cli
from vgm2p_fast.datasets import DatasetError, load_dataset
from vgm2p_fast.vault import INSTALL_HINT, convert_vault, find_vault_dir, read_vault

ts = pytest.importorskip("tensorstore", reason=f"OG-MARL vaults need tensorstore: {INSTALL_HINT}")

TIME_AXIS = int(10e12)  # flashbax preallocates the time axis to this length


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for key, sub in tree.items():
        if isinstance(sub, dict):
            out.update(_flatten(sub, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}."] = sub
    return out


def write_vault(folder: Path, experience: dict, garbage_rows: int = 3,
                buffer_len: int = 64) -> None:
    """Write ``experience`` (a tree of ``[B, T, ...]`` arrays) as flashbax's Vault does, plus
    ``garbage_rows`` of -1 after the written index that a reader must ignore. As in flashbax
    0.1.3, the metadata records the shapes of the recording buffer (time axis ``buffer_len``),
    not of what was written; ``vault_index`` says that."""
    folder.mkdir(parents=True)
    meta = {
        "version": 1.2,
        "structure_shape": _tree_map(
            experience, lambda a: str((a.shape[0], buffer_len, *a.shape[2:]))),
        "structure_dtype": _tree_map(experience, lambda a: a.dtype.name),
        "recorded_with": "test",
    }
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


def _tree_map(tree: dict, fn) -> dict:
    return {k: _tree_map(v, fn) if isinstance(v, dict) else fn(v) for k, v in tree.items()}


def _smax_experience(seed: int = 0, b: int = 1, t: int = 30, n: int = 3, k: int = 5) -> dict:
    rng = np.random.default_rng(seed)
    legals = rng.random((b, t, n, k)) < 0.6
    actions = rng.integers(0, k, (b, t, n)).astype(np.int32)
    np.put_along_axis(legals, actions[..., None].astype(np.int64), True, axis=-1)
    team = rng.normal(size=(b, t, 1)).astype(np.float32)
    terminals = np.zeros((b, t, n), np.float32)
    terminals[:, [9, 19]] = 1.0  # episodes end at steps 9 and 19; steps 20.. are unfinished
    terminals[:, 4, 0] = 1.0  # one agent's flag alone (a dead unit) does not end the episode
    return {
        "observations": rng.normal(size=(b, t, n, 6)).astype(np.float32),
        "actions": actions,
        "rewards": np.repeat(team, n, axis=-1),
        "terminals": terminals,
        "truncations": np.zeros((b, t, n), np.float32),
        "infos": {"legals": legals.astype(np.float32),
                  "state": rng.normal(size=(b, t, 8)).astype(np.float32)},
    }


def test_read_vault_honours_vault_index(tmp_path):
    exp = _smax_experience()
    write_vault(tmp_path / "3m.vlt" / "Good", exp)
    leaves = read_vault(tmp_path / "3m.vlt")  # the only uid is picked
    assert sorted(leaves) == ["actions", "infos.legals", "infos.state", "observations",
                              "rewards", "terminals", "truncations"]
    for name, arr in _flatten(exp).items():
        np.testing.assert_array_equal(leaves[name[:-1]], arr, err_msg=name)


def test_convert_discrete_through_the_cli(tmp_path, capsys):
    exp = _smax_experience(seed=1)
    write_vault(tmp_path / "3m.vlt" / "Medium", exp)
    out = tmp_path / "smax-3m-medium.h5"
    argv = ["data", "convert", str(tmp_path / "3m.vlt"), str(out), "--env", "smax/3m",
            "--uid", "Medium"]
    assert cli.main(argv) == 0
    assert "20 transitions, 2 episodes" in capsys.readouterr().out
    ds = load_dataset(out)
    keep = slice(0, 20)  # the unfinished episode (steps 20..29) is dropped
    assert ds.discrete and ds.n_actions == 5 and ds.n_agents == 3 and ds.env == "smax/3m"
    np.testing.assert_array_equal(ds.observations.numpy(), exp["observations"][0, keep])
    np.testing.assert_array_equal(ds.actions.numpy(), exp["actions"][0, keep])
    np.testing.assert_array_equal(ds.avail_actions.numpy(), exp["infos"]["legals"][0, keep] > 0)
    np.testing.assert_array_equal(ds.states.numpy(), exp["infos"]["state"][0, keep])
    np.testing.assert_array_equal(ds.rewards.numpy(), exp["rewards"][0, keep, 0])
    assert ds.terminals.nonzero().squeeze(1).tolist() == [9, 19]
    assert not ds.truncations.any()
    assert ds.attrs["converted_by"] == "vgm2p data convert"


def test_convert_continuous_streams_and_bounds(tmp_path):
    rng = np.random.default_rng(2)
    b, t, n, a = 2, 25, 2, 3
    truncations = np.zeros((b, t, n), bool)
    truncations[0, [11, 24]] = True  # stream 0: two full episodes
    truncations[1, 15] = True  # stream 1: one episode, then 9 unfinished steps
    exp = {
        "observations": rng.normal(size=(b, t, n, 4)).astype(np.float32),
        "actions": rng.uniform(-0.4, 0.4, (b, t, n, a)).astype(np.float32),
        "rewards": np.repeat(rng.normal(size=(b, t, 1)), n, axis=-1).astype(np.float32),
        "terminals": np.zeros((b, t, n), bool),
        "truncations": truncations,
    }
    write_vault(tmp_path / "2halfcheetah.vlt" / "Good", exp)
    out = tmp_path / "hc.h5"
    convert_vault(tmp_path / "2halfcheetah.vlt", out, env="mamujoco/HalfCheetah-2x3",
                  action_low=[-0.4] * a, action_high=[0.4] * a, compression=None)
    ds = load_dataset(out)
    assert ds.n_transitions == 25 + 16 and ds.n_episodes == 3
    want = np.concatenate([exp["actions"][0], exp["actions"][1, :16]]) / 0.4
    np.testing.assert_allclose(ds.actions.numpy(), want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ds.action_high.numpy(), [0.4] * a)
    assert ds.truncations.nonzero().squeeze(1).tolist() == [11, 24, 40]


def test_convert_refuses_bad_vaults(tmp_path):
    exp = _smax_experience(seed=3)
    exp["rewards"][0, 7, 1] += 1.0  # agents disagree on the team reward at step 7
    write_vault(tmp_path / "v.vlt" / "Good", exp)
    with pytest.raises(DatasetError, match=r"rewards: expected the same reward for every agent"
                                           r".*first: stream 0, step 7"):
        convert_vault(tmp_path / "v.vlt", tmp_path / "o.h5", env="smax/3m")
    convert_vault(tmp_path / "v.vlt", tmp_path / "o.h5", env="smax/3m", reward="mean")
    np.testing.assert_allclose(load_dataset(tmp_path / "o.h5").rewards.numpy(),
                               exp["rewards"][0, :20].mean(-1), rtol=1e-6)

    write_vault(tmp_path / "v.vlt" / "Poor", _smax_experience(seed=4))
    with pytest.raises(DatasetError, match=r"uid: expected --uid naming one of Good, Poor"):
        find_vault_dir(tmp_path / "v.vlt")
    with pytest.raises(DatasetError, match=r"uid: expected one of \['Good', 'Poor'\]"):
        find_vault_dir(tmp_path / "v.vlt", "Replay")

    # Actions outside [-1, 1] without bounds: the writer's own check refuses, nothing written.
    cont = {"observations": np.zeros((1, 4, 2, 3), np.float32),
            "actions": np.full((1, 4, 2, 1), 2.0, np.float32),
            "rewards": np.zeros((1, 4, 2), np.float32), "terminals": np.ones((1, 4, 2), bool),
            "truncations": np.zeros((1, 4, 2), bool)}
    write_vault(tmp_path / "c.vlt" / "Good", cont)
    with pytest.raises(DatasetError, match=r"actions: expected values in \[-1, 1\]"):
        convert_vault(tmp_path / "c.vlt", tmp_path / "c.h5", env="mamujoco/Hopper-3x1")
    assert not (tmp_path / "c.h5").exists()
