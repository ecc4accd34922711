"""MADiff, OMAR, OMIGA (MaMuJoCo) and OMIGA (SMAC) conversion: small sources written in each
project's layout (``tests/convert_fixtures.py``), converted, and compared row for row."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from convert_fixtures import assert_rows, write_madiff, write_omar, write_omiga, write_omiga_smac

from vgm2p_fast.convert import convert, detect_format
from vgm2p_fast.datasets import DatasetError, load_dataset


# --------------------------------------------------------------------------------- madiff
@pytest.mark.parametrize("chunk_bytes", [1, 1 << 30])  # an episode per chunk; one chunk
def test_madiff_smac_strips_ids_and_reads_discounts(tmp_path, chunk_bytes):
    src = tmp_path / "smac" / "3m" / "Good"
    want = write_madiff(src, discrete=True)
    assert detect_format(src) == "madiff"
    report = convert(src, tmp_path / "o.h5", env="smax/3m", chunk_bytes=chunk_bytes)
    assert "stripped 3 one-hot agent-id columns" in report
    ds = load_dataset(tmp_path / "o.h5")
    assert ds.obs_dim == 5 and ds.n_actions == 4 and ds.discrete
    assert_rows(ds, want)  # episode 2 has discount 1 at its end: a truncation
    assert ds.truncations.nonzero().squeeze(1).tolist() == [18]
    assert ds.terminals.nonzero().squeeze(1).tolist() == [6, 23]


def test_madiff_mamujoco_without_discounts_uses_the_episode_limit(tmp_path):
    src = tmp_path / "mamujoco" / "2halfcheetah" / "Good"
    want = write_madiff(src, discrete=False, n=2, discounts=False)
    convert(src, tmp_path / "o.h5", env="mamujoco/HalfCheetah-2x3", episode_limit=12)
    ds = load_dataset(tmp_path / "o.h5")
    assert_rows(ds, want)  # lengths 7, 12, 5: the 12-row episode hit the limit
    with pytest.raises(DatasetError, match=r"path_lengths: expected episodes of at most 6"):
        convert(src, tmp_path / "o.h5", env="mamujoco/HalfCheetah-2x3", episode_limit=6)
    convert(src, tmp_path / "p.h5", env="mamujoco/HalfCheetah-2x3")  # no limit: MADiff's
    assert load_dataset(tmp_path / "p.h5").terminals.sum() == 3  # loaders: all terminals


def test_madiff_refuses_observations_without_agent_ids(tmp_path):
    src = tmp_path / "smac" / "3m" / "Good"
    write_madiff(src)
    obs = np.load(src / "obs.npy")
    obs[4, 1, 0] = 0.5  # agent 1's id column 0 should be 0
    np.save(src / "obs.npy", obs)
    with pytest.raises(DatasetError, match=r"obs.npy: obs: expected one-hot agent ids in the "
                                           r"first 3 columns.*row 4, agent 1"):
        convert(src, tmp_path / "o.h5", env="smax/3m")


# ----------------------------------------------------------------------------------- omar
def test_omar_pads_agents_cuts_episodes_and_combines_rewards(tmp_path):
    src = tmp_path / "simple_spread" / "medium" / "seed_0_data"
    raw = write_omar(src, t=60)
    assert detect_format(src) == "omar"
    with pytest.raises(DatasetError, match=r"rews_0.npy: rews: expected the same reward for "
                                           r"every agent.*--reward mean"):
        convert(src, tmp_path / "o.h5", env="smax/3m")
    report = convert(src, tmp_path / "o.h5", env="mamujoco/HalfCheetah-3x1", reward="mean")
    assert "dropped 10 rows after the last finished episode" in report  # 60 = 2 x 25 + 10
    ds = load_dataset(tmp_path / "o.h5")
    keep = slice(0, 50)
    assert_rows(ds, {"observations": raw["observations"][keep],
                     "next_observations": raw["next_observations"][keep],
                     "actions": raw["actions"][keep]})
    np.testing.assert_allclose(ds.rewards.numpy(), raw["rewards_per_agent"][keep].mean(1),
                               rtol=1e-6)
    assert ds.truncations.nonzero().squeeze(1).tolist() == [24, 49] and not ds.terminals.any()
    convert(src, tmp_path / "p.h5", env="mamujoco/HalfCheetah-3x1", reward="sum",
            episode_limit=20)
    ds = load_dataset(tmp_path / "p.h5")
    assert ds.n_episodes == 3 and ds.n_transitions == 60
    np.testing.assert_allclose(ds.rewards.numpy(), raw["rewards_per_agent"].sum(1), rtol=1e-6)


def test_omar_refuses_misaligned_agent_files(tmp_path):
    src = tmp_path / "simple_tag" / "random" / "seed_1_data"
    write_omar(src, shared_reward=True)
    np.save(src / "acs_2.npy", np.zeros((59, 2), np.float32))
    with pytest.raises(DatasetError, match=r"acs_2.npy: acs: expected \[T, dim\] like "
                                           r"obs_0.npy with 60 rows, found shape \(59, 2\)"):
        convert(src, tmp_path / "o.h5", env="smax/3m")


# ---------------------------------------------------------------------------------- omiga
def test_omiga_mamujoco_episode_limit_and_concatenated_states(tmp_path):
    src = tmp_path / "HalfCheetah-v2-2x3-expert.hdf5"
    want = write_omiga(src, lengths=(10, 6, 10, 4), limit=10)
    assert detect_format(src) == "omiga"
    report = convert(src, tmp_path / "o.h5", env="mamujoco/HalfCheetah-2x3", episode_limit=10,
                     chunk_bytes=1)
    assert "dropped 4 rows" in report
    ds = load_dataset(tmp_path / "o.h5")
    assert_rows(ds, want)  # 10 rows: truncation; 6 rows ending at d: terminal
    assert ds.truncations.nonzero().squeeze(1).tolist() == [9, 25]
    with pytest.raises(DatasetError, match=r"expected episodes of at most 8 rows.*an episode "
                                           r"of 10 rows ending at row 9"):
        convert(src, tmp_path / "o.h5", env="mamujoco/HalfCheetah-2x3", episode_limit=8)


def test_omiga_refuses_a_missing_dataset(tmp_path):
    import h5py

    src = tmp_path / "Ant-v2-2x4-medium.hdf5"
    write_omiga(src)
    with h5py.File(src, "a") as f:
        del f["d"]
    with pytest.raises(DatasetError, match=r"Ant-v2-2x4-medium.hdf5: d: expected OMIGA's "
                                           r"datasets s, o, a, r, d"):
        convert(src, tmp_path / "o.h5", format="omiga", env="mamujoco/Ant-2x4")


# ----------------------------------------------------------------------------- omiga-smac
def test_omiga_smac_episode_files(tmp_path):
    src = tmp_path / "6h_vs_8z" / "good"
    want = write_omiga_smac(src, lengths=(5, 8, 3))
    # An episode whose agents have different lengths: OMIGA's load_data skips it.
    bad = torch.load(src / "episode_001.pt", weights_only=False)
    bad[0] = bad[0][:-1]
    torch.save(bad, src / "episode_001b.pt")
    assert detect_format(src) == "omiga-smac"
    report = convert(src, tmp_path / "o.h5", env="smax/3m", episode_limit=8)
    assert "read 4 episode files, skipped 1 whose agents have different lengths" in report
    ds = load_dataset(tmp_path / "o.h5")
    assert_rows(ds, want, skip=("terminals", "truncations"))
    assert ds.terminals.nonzero().squeeze(1).tolist() == [4, 15]  # 5 and 3 steps < 8
    assert ds.truncations.nonzero().squeeze(1).tolist() == [12]  # exactly 8 steps


def test_omiga_smac_refuses_malformed_steps_and_code(tmp_path):
    src = tmp_path / "3m" / "poor"
    write_omiga_smac(src, lengths=(4,))
    episode = torch.load(src / "episode_000.pt", weights_only=False)
    episode[1][2] = episode[1][2][:5]  # agent 1, step 2: five entries instead of six
    torch.save(episode, src / "episode_000.pt")
    with pytest.raises(DatasetError, match=r"episode_000.pt: ava: expected step entry 5 of "
                                           r"\[g, o, a, r, d, ava\]"):
        convert(src, tmp_path / "o.h5", env="smax/3m")
    torch.save({"not": "an episode", "fn": print}, src / "episode_000.pt")  # a pickled global
    with pytest.raises(DatasetError, match=r"episode_000.pt: file: expected an episode saved "
                                           r"by torch.save"):
        convert(src, tmp_path / "o.h5", format="omiga-smac", env="smax/3m")
