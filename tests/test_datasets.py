"""Dataset layer: every rule of the HDF5 format refused with a one-line error, the writer
refusing the same, lossless round trips, any env name and per-agent bounds. The container and
``vgm2p data`` are in ``test_dataset_container.py``; the files both break in ``dataset_lab.py``."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from dataset_lab import ACT, OBS, STATE, K, N, T, broken_copy, make_arrays, rewrite, set_at

from vgm2p_fast import _format, cli, datasets, envs
from vgm2p_fast.datasets import DatasetError, load_dataset, write_dataset


def _set_attr(name, value):
    def edit(f):
        f.attrs[name] = value
    return edit


def _del(name):
    def edit(f):
        del f[name]
    return edit


def _del_attr(name):
    def edit(f):
        del f.attrs[name]
    return edit


def _set_at_attr(name, index, value):
    """Edit that sets element ``index`` of array attribute ``name``."""
    def edit(f):
        arr = f.attrs[name].copy()
        arr[index] = value
        f.attrs[name] = arr
    return edit


# (id, kind, edit, key named in the message, a phrase of the message)
BROKEN = [
    *[(f"missing-{k}", "continuous", _del(k), k, "no such dataset") for k in _format._REQUIRED],
    *[(f"missing-attr-{a}", "continuous", _del_attr(a), f"attribute {a}", "found none")
      for a in ("format_version", "env", "n_agents", "action_space", "action_low", "action_high")],
    ("missing-attr-n_actions", "discrete", _del_attr("n_actions"), "attribute n_actions",
     "found none"),
    ("dtype-observations-f64", "continuous", rewrite("observations", lambda a: a.astype("f8")),
     "observations", "expected dtype float32, found dtype float64"),
    ("dtype-actions-f16", "continuous", rewrite("actions", lambda a: a.astype("f2")),
     "actions", "expected dtype float32"),
    ("dtype-actions-int32", "discrete", rewrite("actions", lambda a: a.astype("i4")),
     "actions", "expected dtype int64, found dtype int32"),
    ("dtype-rewards-f64", "continuous", rewrite("rewards", lambda a: a.astype("f8")),
     "rewards", "dtype float32"),
    ("dtype-terminals-uint8", "continuous", rewrite("terminals", lambda a: a.astype("u1")),
     "terminals", "expected dtype bool, found dtype uint8"),
    ("dtype-avail-int", "discrete", rewrite("avail_actions", lambda a: a.astype("i1")),
     "avail_actions", "expected dtype bool"),
    ("rank-observations", "continuous", rewrite("observations", lambda a: a.reshape(T, -1)),
     "observations", "expected rank 3"),
    ("rank-rewards", "continuous", rewrite("rewards", lambda a: a[:, None]), "rewards",
     "expected rank 1"),
    ("rank-discrete-actions", "discrete", rewrite("actions", lambda a: a[..., None]),
     "actions", "expected rank 2"),
    ("agents-observations", "continuous", rewrite("observations", lambda a: a[:, :2]),
     "observations", "(attribute n_agents)"),
    ("agents-attribute", "discrete", _set_attr("n_agents", N + 1), "observations",
     f"= ({T}, {N + 1}, *) (attribute n_agents), found shape ({T}, {N}, {OBS})"),
    ("agents-actions", "continuous", rewrite("actions", lambda a: a[:, :1]), "actions",
     "(attribute n_agents)"),
    ("act-dim-vs-bounds", "continuous", rewrite("actions", lambda a: a[..., :1]), "actions",
     "(last dim of action_low)"),
    ("act-dim-vs-per-agent-bounds", "continuous",
     lambda f: [_set_attr(k, np.full((N, ACT + 1), v))(f)
                for k, v in (("action_low", -1.0), ("action_high", 1.0))],
     "actions", f"= ({T}, {N}, {ACT + 1}) (last dim of action_low)"),
    ("n-actions-vs-avail", "discrete", _set_attr("n_actions", K + 1), "avail_actions",
     "(attribute n_actions)"),
    ("rows-rewards", "continuous", rewrite("rewards", lambda a: a[:-1]), "rewards",
     "rows of observations"),
    ("rows-truncations", "discrete", rewrite("truncations", lambda a: a[:5]), "truncations",
     "rows of observations"),
    ("state-dim-next-states", "continuous",
     lambda f: f.create_dataset("next_states", data=np.zeros((T, STATE + 1), "f4")),
     "next_states", f"= ({T}, {STATE})"),
    ("nan-observations", "continuous", set_at("observations", (3, 1, 2), np.nan),
     "observations", "1 NaN/inf values (first at row 3, agent 1"),
    ("inf-rewards", "discrete", set_at("rewards", 7, np.inf), "rewards",
     "(first at row 7: inf)"),
    ("nan-actions", "continuous", set_at("actions", (0, 0, 0), np.nan), "actions",
     "finite values"),
    ("nan-states", "discrete", set_at("states", (T - 1, 0), -np.inf), "states",
     "finite values"),
    ("empty-rows", "continuous",
     lambda f: [rewrite(k, lambda a: a[:0])(f) for k in ("observations", "actions", "rewards",
                                                          "terminals", "truncations", "states")],
     "observations", "at least one row"),
    ("last-episode-open", "continuous", set_at("terminals", T - 1, False),
     "terminals/truncations", f"the last row ({T - 1}) to end an episode"),
    ("continuous-above-1", "continuous", set_at("actions", (5, 2, 1), 1.5), "actions",
     "values in [-1, 1]"),
    ("continuous-below-1", "continuous", set_at("actions", (6, 0, 0), -1.0001), "actions",
     "1 outside (first at row 6, agent 0, dim 0"),
    ("discrete-too-large", "discrete", set_at("actions", (4, 1), K), "actions",
     f"integers in [0, n_actions = {K}), found 1 outside (first at row 4, agent 1: {K})"),
    ("discrete-negative", "discrete", set_at("actions", (2, 0), -1), "actions", "outside"),
    ("discrete-unavailable", "discrete",
     lambda f: set_at("avail_actions", (11, 2, int(f["actions"][11, 2])), False)(f),
     "avail_actions", "1 taken actions marked unavailable (first at row 11, agent 2"),
    # Any env string trains; one of a registered family must follow its syntax (a typo).
    ("env-malformed", "continuous", _set_attr("env", "mamujoco/HalfCheetah"), "attribute env",
     "expected 'mamujoco/<scenario>-<agent_conf>' such as 'mamujoco/HalfCheetah-2x3'"),
    ("env-malformed-smax", "discrete", _set_attr("env", "smax/3m/x"), "attribute env",
     "expected 'smax/<map>'"),
    ("env-empty", "continuous", _set_attr("env", ""), "attribute env",
     "expected a non-empty string naming the environment"),
    ("env-blank", "discrete", _set_attr("env", "  "), "attribute env", "a non-empty string"),
    ("env-not-string", "continuous", _set_attr("env", 3), "attribute env",
     "found 3 (type int64, not a string)"),
    ("space-of-unknown-env", "continuous",
     lambda f: (_set_attr("env", "my-sim")(f), _set_attr("action_space", "box")(f)),
     "attribute action_space", "expected 'continuous' or 'discrete', found 'box'"),
    ("space-missing-unknown-env", "discrete",
     lambda f: (_set_attr("env", "vmas/navigation")(f), _del_attr("action_space")(f)),
     "attribute action_space", "'continuous' or 'discrete', found none"),
    ("env-space-mismatch", "continuous", _set_attr("action_space", "discrete"),
     "attribute action_space", "'continuous' (env mamujoco/Hopper-3x1)"),
    ("format-too-new", "continuous", _set_attr("format_version", 99),
     "attribute format_version", "found 99"),
    ("bounds-order", "continuous", _set_attr("action_high", np.array([2.0, -1.5])),
     "attribute action_high", "values > action_low"),
    ("bounds-nan", "continuous", _set_attr("action_low", np.array([np.nan, -1.0])),
     "attribute action_low", "finite values"),
    ("bounds-agents", "continuous", _set_attr("action_low", np.full((N + 1, ACT), -1.0)),
     "attribute action_low", f"[n_agents = {N}, act_dim] (per agent), found"),
    ("bounds-rank", "continuous", _set_attr("action_high", np.ones((N, ACT, 1))),
     "attribute action_high", f"(shape ({N}, {ACT}, 1), dtype float64)"),
    ("bounds-text", "continuous", _set_attr("action_low", "-1"), "attribute action_low",
     "a float array [act_dim]"),
    ("bounds-shapes-differ", "continuous", _set_attr("action_low", np.full((N, ACT), -3.0)),
     "attribute action_high", f"(same shape ({N}, {ACT})), found [2.0, 0.5] (shape ({ACT},))"),
    ("bounds-per-agent-order", "continuous",
     lambda f: [_set_attr(k, np.full((N, ACT), v))(f) for k, v in (("action_low", -1.0),
                                                                   ("action_high", 1.0))]
     and _set_at_attr("action_high", (2, 1), -1.0)(f),
     "attribute action_high", "values > action_low"),
    ("avail-on-continuous", "continuous",
     lambda f: f.create_dataset("avail_actions", data=np.ones((T, N, 2), bool)),
     "avail_actions", "no availability mask for continuous actions"),
    ("group-not-dataset", "continuous", lambda f: (_del("rewards")(f), f.create_group("rewards")),
     "rewards", "expected a dataset"),
]


@pytest.mark.parametrize(("kind", "edit", "key", "phrase"),
                         [pytest.param(*case[1:], id=case[0]) for case in BROKEN])
def test_loader_refuses_each_broken_rule(valid_files, tmp_path, kind, edit, key, phrase):
    path = broken_copy(valid_files, tmp_path, kind, edit)
    with pytest.raises(DatasetError) as info:
        load_dataset(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: {key}: expected "), msg
    assert ", found " in msg and phrase in msg, msg
    assert isinstance(info.value, ValueError) and info.value.key == key


def test_valid_files_load(valid_files):
    # The controls of every case above: the unedited files load.
    for path in valid_files.values():
        assert load_dataset(path).n_transitions == T


@pytest.mark.parametrize("how", ["empty", "truncated", "text", "directory"])
def test_loader_refuses_unreadable_files(valid_files, tmp_path, how):
    path = tmp_path / "bad.h5"
    if how == "empty":
        path.touch()
    elif how == "truncated":
        data = valid_files["continuous"].read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "text":
        path.write_text("observations,actions\n1,2\n")
    else:
        path.mkdir()
    with pytest.raises(DatasetError) as info:
        load_dataset(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: file: expected "), msg
    if how == "empty":
        assert "found an empty file (0 bytes)" in msg
    if how == "truncated":
        assert "truncated" in msg


def test_unknown_name_lists_the_known_ones(tmp_path, monkeypatch):
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(DatasetError, match=r"no-such-data: file: expected an existing path or "
                                           r"a dataset name .*found neither"):
        load_dataset("no-such-data")


# ------------------------------------------------------------------------------- the writer
WRITER_BROKEN = [
    ("nan", lambda a: a["observations"].__setitem__((0, 0, 0), np.nan), "observations"),
    ("action-range", lambda a: a["actions"].__setitem__((1, 1, 1), 3.0), "actions"),
    ("open-episode", lambda a: a["terminals"].__setitem__(T - 1, False), "terminals/truncations"),
    ("rows", lambda a: a.__setitem__("rewards", a["rewards"][:-2]), "rewards"),
    ("env", lambda a: a.__setitem__("env", "mamujoco/HalfCheetah"), "attribute env"),
    ("flags-not-01", lambda a: a.__setitem__("terminals", a["terminals"] * 2.0), "terminals"),
]


@pytest.mark.parametrize(("edit", "key"), [pytest.param(*c[1:], id=c[0]) for c in WRITER_BROKEN])
def test_writer_refuses_what_the_loader_refuses(tmp_path, edit, key):
    arrays = make_arrays(discrete=False)
    edit(arrays)
    path = tmp_path / "out.h5"
    with pytest.raises(DatasetError) as info:
        write_dataset(path, **arrays)
    assert info.value.key == key and str(info.value).startswith(f"{path}: {key}: expected")
    assert list(tmp_path.iterdir()) == []  # nothing written, no temp file left behind


def test_writer_refuses_discrete_unavailable(tmp_path):
    arrays = make_arrays(discrete=True)
    a = arrays["actions"][3, 0]
    arrays["avail_actions"][3, 0, a] = False
    with pytest.raises(DatasetError, match="avail_actions: expected every action taken"):
        write_dataset(tmp_path / "d.h5", **arrays)


def test_writer_replaces_atomically(tmp_path):
    path = tmp_path / "d.h5"
    write_dataset(path, **make_arrays(discrete=False, seed=1))
    first = load_dataset(path).rewards.clone()
    bad = make_arrays(discrete=False, seed=2)
    bad["rewards"][0] = np.nan
    with pytest.raises(DatasetError):
        write_dataset(path, **bad)
    torch.testing.assert_close(load_dataset(path).rewards, first)  # old file intact
    write_dataset(path, **make_arrays(discrete=False, seed=2), compression=None)
    assert not torch.equal(load_dataset(path).rewards, first)
    assert [p.name for p in tmp_path.iterdir()] == ["d.h5"]


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
@pytest.mark.parametrize("compression", ["gzip", "lzf", None])
def test_round_trip_is_exact(tmp_path, kind, compression):
    arrays = make_arrays(kind == "discrete", seed=3)
    path = tmp_path / "d.h5"
    write_dataset(path, **arrays, compression=compression, behaviour_policy="mappo-medium")
    ds = load_dataset(path)
    for name in ("observations", "actions", "rewards", "terminals", "truncations", "states"):
        np.testing.assert_array_equal(getattr(ds, name).numpy(), arrays[name], err_msg=name)
    assert ds.observations.dtype == torch.float32 and ds.terminals.dtype == torch.bool
    assert ds.env == arrays["env"] and ds.n_agents == N and ds.source == str(path)
    assert ds.attrs == {"behaviour_policy": "mappo-medium"}
    if kind == "discrete":
        assert ds.discrete and ds.n_actions == K and ds.action_dim == K
        assert ds.actions.dtype == torch.int64 and ds.action_low is None
        np.testing.assert_array_equal(ds.avail_actions.numpy(), arrays["avail_actions"])
    else:
        assert not ds.discrete and ds.n_actions is None and ds.action_dim == ACT
        assert ds.avail_actions is None
        assert ds.action_low.tolist() == [-2.0, -1.0] and ds.action_high.tolist() == [2.0, 0.5]


def test_writer_converts_torch_and_loose_dtypes(tmp_path):
    a = make_arrays(discrete=True, seed=4)
    path = tmp_path / "d.h5"
    write_dataset(path, observations=torch.from_numpy(a["observations"]).double(),
                  actions=torch.from_numpy(a["actions"]).int(), rewards=a["rewards"].tolist(),
                  terminals=a["terminals"].astype(np.uint8),
                  truncations=torch.from_numpy(a["truncations"]).float(),
                  avail_actions=a["avail_actions"], env="smax/3m")
    ds = load_dataset(path)
    assert ds.n_actions == K  # from avail_actions
    np.testing.assert_array_equal(ds.actions.numpy(), a["actions"])
    np.testing.assert_array_equal(ds.terminals.numpy(), a["terminals"])
    torch.testing.assert_close(ds.observations, torch.from_numpy(a["observations"]))


def test_writer_default_bounds_and_bad_arguments(tmp_path):
    a = make_arrays(discrete=False)
    del a["action_low"], a["action_high"]
    write_dataset(tmp_path / "d.h5", **a)
    ds = load_dataset(tmp_path / "d.h5")
    assert ds.action_low.tolist() == [-1.0] * ACT and ds.action_high.tolist() == [1.0] * ACT
    with pytest.raises(ValueError, match="compression: expected 'gzip', 'lzf' or None"):
        write_dataset(tmp_path / "e.h5", **a, compression="zstd")
    with pytest.raises(ValueError, match=r"extra_attrs: .*found \['format_version'\]"):
        write_dataset(tmp_path / "e.h5", **a, format_version=2)
    with pytest.raises(ValueError, match="observations: expected a numpy array or torch tensor"):
        write_dataset(tmp_path / "e.h5", **{**a, "observations": "obs.npy"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5"]


@pytest.mark.parametrize("env", ["vmas/navigation", "my-sim", "gym/HalfCheetah-v5",
                                 "Hopper 3x1 (my fork)"])
@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_any_env_name_loads_and_reports_evaluation_skipped(tmp_path, env, kind):
    """Own data: an env no family is registered for trains; evaluation says why it is skipped."""
    path = tmp_path / "own.h5"
    write_dataset(path, **{**make_arrays(kind == "discrete", seed=9), "env": env})
    ds = load_dataset(path)
    assert ds.env == env and ds.discrete == (kind == "discrete") and ds.n_transitions == T
    status = envs.evaluation_status(ds.env)
    family = env.partition("/")[0]
    assert not status and status.available is False
    assert status.reason.startswith(f"evaluation skipped: no environment family {family!r} "
                                    f"is registered (registered: mamujoco, smax")
    assert "see vgm2p_fast.envs.register_family" in status.reason and "\n" not in status.reason


def test_evaluation_status_of_the_builtin_families(monkeypatch):
    monkeypatch.setitem(sys.modules, "jaxmarl", None)   # what a missing package looks like
    status = envs.evaluation_status("smax/3m")
    assert not status and status.reason == (
        "evaluation skipped: smax environments need the package jaxmarl (jaxmarl is not "
        "installed); install it with `pip install -e '.[smax]'`")
    with pytest.raises(ValueError, match="spec: expected 'mamujoco/<scenario>-<agent_conf>'"):
        envs.evaluation_status("mamujoco/HalfCheetah")  # a typo is an error, not a skip
    for bad in ("", 3, None):
        with pytest.raises(ValueError, match="spec: expected a"):
            envs.evaluation_status(bad)


def test_per_agent_bounds_round_trip(tmp_path, capsys):
    a = make_arrays(discrete=False, seed=10)
    low = np.array([[-2.0, -1.0], [-0.4, 0.0], [-3.0, -3.0]])      # [N, act_dim]
    high = np.array([[2.0, 0.5], [0.4, 1.0], [3.0, 1e3]])
    write_dataset(tmp_path / "d.h5", **{**a, "action_low": low, "action_high": high})
    ds = load_dataset(tmp_path / "d.h5")
    assert ds.action_low.shape == ds.action_high.shape == (N, ACT)
    assert ds.action_low.dtype == torch.float32
    np.testing.assert_array_equal(ds.action_low.numpy(), low.astype(np.float32))
    np.testing.assert_array_equal(ds.action_high.numpy(), high.astype(np.float32))
    assert ds.summary()["action_low"] == low.astype(np.float32).tolist()
    assert ds.to("cpu").action_high.shape == (N, ACT)
    assert cli.main(["data", "info", str(tmp_path / "d.h5")]) == 0
    assert "env bounds [-3, 1000]" in capsys.readouterr().out
    # Shared bounds stay [act_dim]; one bound given per agent: the other defaults in its shape.
    write_dataset(tmp_path / "e.h5", **a)
    assert load_dataset(tmp_path / "e.h5").action_low.shape == (ACT,)
    write_dataset(tmp_path / "f.h5", **{**a, "action_low": -np.ones((N, ACT)) * 0.5,
                                        "action_high": None})
    f = load_dataset(tmp_path / "f.h5")
    assert f.action_high.tolist() == [[1.0] * ACT] * N and f.action_low.shape == (N, ACT)


def test_writer_refuses_bad_per_agent_bounds(tmp_path):
    a = make_arrays(discrete=False)
    with pytest.raises(DatasetError) as info:
        write_dataset(tmp_path / "d.h5", **{**a, "action_low": -np.ones((N - 1, ACT)),
                                            "action_high": np.ones((N - 1, ACT))})
    assert info.value.key == "attribute action_low"
    msg = str(info.value)
    assert f"[n_agents = {N}, act_dim]" in msg and f"(shape ({N - 1}, {ACT})" in msg
    with pytest.raises(DatasetError, match="attribute action_high: expected values > action_low"):
        write_dataset(tmp_path / "d.h5", **{**a, "action_low": np.zeros((N, ACT)),
                                            "action_high": np.zeros((N, ACT))})
    assert list(tmp_path.iterdir()) == []
