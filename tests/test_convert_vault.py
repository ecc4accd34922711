"""OG-MARL vault conversion, on small vaults written with tensorstore in flashbax's on-disk
layout (``tests/convert_fixtures.py`` ``write_vault``)."""

from __future__ import annotations

import numpy as np
import pytest
from convert_fixtures import smac_vault_experience, write_vault

from vgm2p_fast import cli
from vgm2p_fast.convert import convert
from vgm2p_fast.convert.vault import INSTALL_HINT, find_vault_dir, open_vault
from vgm2p_fast.datasets import DatasetError, load_dataset

ts = pytest.importorskip("tensorstore", reason=f"OG-MARL vaults need tensorstore: {INSTALL_HINT}")


def test_open_vault_honours_vault_index(tmp_path):
    exp = smac_vault_experience()
    write_vault(tmp_path / "3m.vlt" / "Good", exp)
    leaves, written = open_vault(find_vault_dir(tmp_path / "3m.vlt"))  # the only uid
    assert written == 30
    assert sorted(leaves) == ["actions", "infos.legals", "infos.state", "observations",
                              "rewards", "terminals", "truncations"]
    np.testing.assert_array_equal(leaves["observations"][:, :written].read().result(),
                                  exp["observations"])


def test_convert_discrete_through_the_cli(tmp_path, capsys):
    exp = smac_vault_experience(seed=1)
    write_vault(tmp_path / "3m.vlt" / "Medium", exp)
    out = tmp_path / "smax-3m-medium.h5"
    argv = ["data", "convert", str(tmp_path / "3m.vlt"), str(out), "--env", "smax/3m",
            "--uid", "Medium"]
    assert cli.main(argv) == 0
    report = capsys.readouterr().out
    assert "20 transitions, 2 episodes" in report and "dropped 10 steps" in report
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
    assert ds.attrs["source_format"] == "vault"


@pytest.mark.parametrize("chunk_bytes", [1, 1 << 30])  # one episode per chunk; all in one
def test_streams_bounds_terminal_wins_and_neg_inf_padding(tmp_path, chunk_bytes):
    rng = np.random.default_rng(2)
    b, t, n, a = 2, 25, 2, 3
    truncations = np.zeros((b, t, n), bool)
    terminals = np.zeros((b, t, n), bool)
    truncations[0, [11, 24]] = True  # stream 0: two full episodes
    terminals[0, 11] = True  # row 11 has both flags: a terminal
    truncations[1, 15] = True  # stream 1: one episode, then 9 unfinished steps
    obs = rng.normal(size=(b, t, n, 4)).astype(np.float32)
    obs[:, :, 1, 3] = -np.inf  # agent 1 has 3 features, padded with -inf
    exp = {"observations": obs,
           "actions": rng.uniform(-0.4, 0.4, (b, t, n, a)).astype(np.float32),
           "rewards": np.repeat(rng.normal(size=(b, t, 1)), n, axis=-1).astype(np.float32),
           "terminals": terminals, "truncations": truncations}
    write_vault(tmp_path / "2halfcheetah.vlt" / "Good", exp)
    out = tmp_path / "hc.h5"
    report = convert(tmp_path / "2halfcheetah.vlt", out, env="mamujoco/HalfCheetah-2x3",
                     action_low=[-0.4] * a, action_high=[0.4] * a, compression=None,
                     chunk_bytes=chunk_bytes)
    assert f"replaced {b * 16 + 9} -inf padding values by 0" in report  # 25 + 16 rows kept
    ds = load_dataset(out)
    assert ds.n_transitions == 25 + 16 and ds.n_episodes == 3
    want = np.concatenate([exp["actions"][0], exp["actions"][1, :16]]) / 0.4
    np.testing.assert_allclose(ds.actions.numpy(), want, rtol=0, atol=1e-6)
    want_obs = np.concatenate([obs[0], obs[1, :16]])
    want_obs[:, 1, 3] = 0.0
    np.testing.assert_array_equal(ds.observations.numpy(), want_obs)
    np.testing.assert_allclose(ds.action_high.numpy(), [0.4] * a)
    assert ds.terminals.nonzero().squeeze(1).tolist() == [11]
    assert ds.truncations.nonzero().squeeze(1).tolist() == [24, 40]


def test_refuses_bad_vaults(tmp_path):
    exp = smac_vault_experience(seed=3)
    exp["rewards"][0, 7, 1] += 1.0  # agents disagree on the team reward at step 7
    write_vault(tmp_path / "v.vlt" / "Good", exp)
    with pytest.raises(DatasetError, match=r"rewards: expected the same reward for every agent"
                                           r".*first: row 7"):
        convert(tmp_path / "v.vlt", tmp_path / "o.h5", env="smax/3m")
    convert(tmp_path / "v.vlt", tmp_path / "o.h5", env="smax/3m", reward="mean")
    np.testing.assert_allclose(load_dataset(tmp_path / "o.h5").rewards.numpy(),
                               exp["rewards"][0, :20].mean(-1), rtol=1e-6)
    with pytest.raises(ValueError, match="--episode-limit: expected none for a vault"):
        convert(tmp_path / "v.vlt", tmp_path / "o.h5", env="smax/3m", episode_limit=10)

    write_vault(tmp_path / "v.vlt" / "Poor", smac_vault_experience(seed=4))
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
    with pytest.raises(DatasetError, match=r"c.vlt/Good: actions: expected values in \[-1, 1\]"):
        convert(tmp_path / "c.vlt", tmp_path / "c.h5", env="mamujoco/Hopper-3x1")
    assert not (tmp_path / "c.h5").exists()
    assert not list(tmp_path.glob(".c.h5.*"))  # no temporary file left behind
