"""The dataset container (episodes, default states, sampling, devices) and the dataset names
and ``vgm2p data`` commands, on the small valid files of ``dataset_lab.py``."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from dataset_lab import OBS, STATE, K, N, T, broken_copy, make_arrays, set_at

from vgm2p_fast import cli, datasets
from vgm2p_fast.datasets import load_dataset, write_dataset


# --------------------------------------------------------------------------- the container
def _episode_reference(dones: np.ndarray, rewards: np.ndarray):
    """Per-row Python loop: the obvious implementation, as the oracle."""
    starts, ids, returns, ep, acc = [0], [], [], 0, 0.0
    for i, (d, r) in enumerate(zip(dones, rewards)):
        ids.append(ep)
        acc += float(r)
        if d:
            returns.append(acc)
            acc, ep = 0.0, ep + 1
            if i + 1 < len(dones):
                starts.append(i + 1)
    return starts, ids, returns


def test_episode_structure_matches_a_loop(valid_files):
    ds = load_dataset(valid_files["discrete"])
    dones = (ds.terminals | ds.truncations).numpy()
    starts, ids, returns = _episode_reference(dones, ds.rewards.numpy())
    assert ds.n_episodes == 3 == len(returns)
    assert ds.episode_starts.tolist() == starts == [0, 10, 25]
    assert ds.episode_ids.tolist() == ids
    assert ds.episode_lengths().tolist() == [10, 15, 15]
    np.testing.assert_allclose(ds.episode_returns().numpy(), returns, rtol=1e-12)
    assert torch.equal(ds.dones, torch.from_numpy(dones))
    s = ds.summary()
    assert (s["transitions"], s["episodes"], s["agents"]) == (T, 3, N)
    assert (s["obs_dim"], s["state_dim"], s["action_dim"]) == (OBS, STATE, K)
    assert s["return_mean"] == pytest.approx(np.mean(returns))
    assert s["return_std"] == pytest.approx(np.std(returns))
    assert (s["return_min"], s["return_max"]) == pytest.approx((min(returns), max(returns)))
    json.dumps(s)  # serialisable


def test_default_states_and_next_states(tmp_path):
    a = make_arrays(discrete=False, seed=5)
    del a["states"]
    write_dataset(tmp_path / "d.h5", **a)
    ds = load_dataset(tmp_path / "d.h5")
    flat = a["observations"].reshape(T, N * OBS)
    np.testing.assert_array_equal(ds.states.numpy(), flat)
    assert ds.states.data_ptr() == ds.observations.data_ptr()  # a view, not a copy
    # next row inside an episode; the row's own state on an episode's last row (9, 24, T-1)
    for t in range(T):
        want = flat[t] if t in (9, 24, T - 1) else flat[t + 1]
        np.testing.assert_array_equal(ds.next_states[t].numpy(), want, err_msg=f"row {t}")


def test_next_states_from_next_observations_and_stored(tmp_path):
    a = make_arrays(discrete=False, seed=6)
    del a["states"]
    nxt = np.random.default_rng(7).normal(size=(T, N, OBS)).astype(np.float32)
    write_dataset(tmp_path / "a.h5", **a, next_observations=nxt)
    ds = load_dataset(tmp_path / "a.h5")
    np.testing.assert_array_equal(ds.next_states.numpy(), nxt.reshape(T, -1))  # exact, also at ends
    np.testing.assert_array_equal(ds.next_observations.numpy(), nxt)
    b = make_arrays(discrete=True, seed=6)
    stored = np.random.default_rng(8).normal(size=(T, STATE)).astype(np.float32)
    write_dataset(tmp_path / "b.h5", **b, next_states=stored)
    np.testing.assert_array_equal(load_dataset(tmp_path / "b.h5").next_states.numpy(), stored)


def test_sampling_and_batch(valid_files):
    ds = load_dataset(valid_files["discrete"])
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    idx = ds.sample_indices(4096, generator=g1)
    assert idx.dtype == torch.int64 and idx.shape == (4096,)
    assert torch.equal(idx, ds.sample_indices(4096, generator=g2))  # reproducible
    assert int(idx.min()) >= 0 and int(idx.max()) < T
    assert len(torch.unique(idx)) == T  # 4096 uniform draws over 40 rows miss none (p < 1e-40)
    b = ds.batch(idx[:9])
    assert set(b) == {"observations", "actions", "rewards", "terminals", "truncations", "dones",
                      "states", "next_states", "avail_actions"}
    for name, x in b.items():
        full = ds.dones if name == "dones" else getattr(ds, name)
        assert torch.equal(x, full[idx[:9]]), name
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="batch_size: expected a positive int"):
            ds.sample_indices(bad)
    with pytest.raises(ValueError, match="idx: expected an int64/int32 tensor"):
        ds.batch(torch.tensor([0.0, 1.0]))
    cont = load_dataset(valid_files["continuous"])
    assert "avail_actions" not in cont.batch(torch.tensor([0, T - 1]))


def test_to_and_pinning(valid_files):
    ds = load_dataset(valid_files["continuous"])
    same = ds.to("cpu")
    assert same is not ds and torch.equal(same.observations, ds.observations)
    with pytest.raises(ValueError, match="pin_memory: expected a cpu device"):
        ds.to("meta", pin_memory=True)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="pin_memory: expected a machine with CUDA"):
            ds.to("cpu", pin_memory=True)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_resident_and_pinned(valid_files):
    ds = load_dataset(valid_files["discrete"])
    gpu = ds.to("cuda")
    assert all(getattr(gpu, f).is_cuda for f in ("observations", "actions", "avail_actions",
                                                  "states", "next_states"))
    g = torch.Generator(device="cuda").manual_seed(0)
    idx = gpu.sample_indices(64, generator=g)
    assert idx.is_cuda
    b = gpu.batch(idx)
    assert torch.equal(b["actions"].cpu(), ds.actions[idx.cpu()])
    with pytest.raises(ValueError, match="generator: expected a generator on cuda"):
        gpu.sample_indices(8, generator=torch.Generator())
    pinned = ds.to("cpu", pin_memory=True)
    assert pinned.pinned and pinned.observations.is_pinned()
    pb = pinned.batch(torch.tensor([0, 5, T - 1]))
    assert all(x.is_pinned() for x in pb.values() if x is not pb["dones"])
    assert torch.equal(pb["observations"].to("cuda", non_blocking=True).cpu(),
                       ds.observations[[0, 5, T - 1]])


# ------------------------------------------------------------------------- names and the CLI
def test_names_bundled_then_cache(valid_files, tmp_path, monkeypatch):
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path))
    shutil.copy(valid_files["discrete"], tmp_path / "my-smax.h5")
    assert "my-smax" in datasets.list_datasets()
    assert load_dataset("my-smax").source == str(tmp_path / "my-smax.h5")
    assert load_dataset("my-smax.h5").env == "smax/3m"


def test_bundled_default_loads():
    path = datasets._BUNDLED_DIR / f"{datasets.BUNDLED_DEFAULT}.h5"
    if not path.is_file():
        pytest.skip(f"the bundled dataset {path} is not generated yet")
    ds = load_dataset(datasets.BUNDLED_DEFAULT)
    assert ds.env == "mamujoco/HalfCheetah-2x3" and not ds.discrete and ds.n_agents == 2
    assert datasets.BUNDLED_DEFAULT in datasets.list_datasets()


def test_cli_data_info(valid_files, capsys):
    assert cli.main(["data", "info", str(valid_files["continuous"])]) == 0
    out = capsys.readouterr().out
    assert "mamujoco/Hopper-3x1" in out and f"transitions   {T}" in out
    assert "episodes      3 (" in out and "return        mean " in out
    assert cli.main(["data", "info", "--json", str(valid_files["discrete"])]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["episodes"] == 3 and summary["action_space"] == "discrete"
    assert summary == load_dataset(valid_files["discrete"]).summary()


def test_cli_refuses_a_broken_file_in_one_line(valid_files, tmp_path, capsys):
    path = broken_copy(valid_files, tmp_path, "continuous", set_at("actions", (1, 1, 1), 7.0))
    assert cli.main(["data", "info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"vgm2p: error: {path}: actions: expected values in [-1, 1]")


def test_cli_data_list(valid_files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path))
    shutil.copy(valid_files["continuous"], tmp_path / "hopper-mine.h5")
    assert cli.main(["data", "list"]) == 0
    assert "hopper-mine" in capsys.readouterr().out.split()


def test_cli_convert_without_tensorstore(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorstore", None)  # what a missing package looks like
    argv = ["data", "convert", str(tmp_path), str(tmp_path / "o.h5"), "--env", "smax/3m"]
    (tmp_path / "metadata.json").write_text("{}")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'vgm2p_fast[ogmarl]'" in err
