"""``TrainConfig``: every knob of a training run, with its help text, choices and range.

``vgm2p train --help`` is generated from the fields (``help`` and ``choices`` metadata); a
config file (JSON/TOML) and the command line set the same fields. Values are validated here,
at the boundary, with one-line errors naming the field, what was expected and what was found.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..advantage import ESTIMATORS
from ..datasets import BUNDLED_DEFAULT
from ..policy.sampling import NOISE
from ..value import CONDITIONS

POLICY_LOSSES = ("meanflow", "flow_matching", "mse")
WEIGHTINGS = ("none", "awr")
EVAL_NOISE = NOISE

# Methods of the results tables: one name -> the options that make it (all on the same
# network, data and budget). `vgm2p train --method NAME` sets them; explicit options win.
METHODS: dict[str, dict[str, Any]] = {
    "vgm2p": {"condition": "binary", "policy_loss": "meanflow", "weighting": "none"},
    "meanflow-bc": {"condition": "none", "policy_loss": "meanflow", "weighting": "none"},
    "fm-bc": {"condition": "none", "policy_loss": "flow_matching", "weighting": "none",
              "eval_steps": 10},
    "mlp-bc": {"condition": "none", "policy_loss": "mse", "weighting": "none"},
    "awfm": {"condition": "none", "policy_loss": "flow_matching", "weighting": "awr",
             "eval_steps": 10},
}

# Largest learning rate whose AdamW step (lr / (1 - beta1) at step 1) is a float32.
_MAX_LR = 1e37

# Options a resumed run may change (they change neither shapes nor the math of a step);
# every other one must equal the checkpoint's.
RESUMABLE = ("steps", "log_every", "checkpoint_every", "keep_checkpoints", "eval_every",
             "eval_episodes", "eval_seed", "eval_noise", "eval_steps", "test_guidance",
             "device", "out")


def _f(default: Any, help: str, choices: tuple | None = None) -> Any:
    meta = {"help": help} if choices is None else {"help": help, "choices": choices}
    if isinstance(default, tuple):
        return dataclasses.field(default_factory=lambda: default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class TrainConfig:
    """Every knob of a run; defaults train the bundled dataset in a few CPU minutes."""

    dataset: str = _f(BUNDLED_DEFAULT, "HDF5 dataset path or the name of a bundled/cached one")
    out: str = _f("", "run folder (default: a new runs/<dataset>-<method>-seed<k>-<time>)")
    method: str = _f("", "preset of a results-table method; explicit options override it",
                     tuple(METHODS))
    # 10,000 steps: ~4 min of one CPU thread for VGM²P (3 x 256, batch 256), so the
    # 5-seed results table fits this machine; the curves flatten from ~6,000 (ABLATIONS.md)
    steps: int = _f(10000, "policy gradient steps, after the critic warm-up")
    seed: int = _f(0, "seed of the network init, batches, noise and evaluation episodes")
    batch_size: int = _f(256, "transitions per step (per rank under DDP)")
    # 1e-3, not 3e-4: on hopper-3x1-medium VGM²P reached 29.7 normalised at 1e-3 against 10.5
    # at 3e-4 (3 seeds; halfcheetah-2x3-medium 41.0 vs 40.5): the velocity field trains slowly
    lr: float = _f(1e-3, "policy AdamW learning rate")
    weight_decay: float = _f(1e-4, "policy AdamW weight decay")
    grad_clip: float = _f(1.0, "max gradient norm, policy and critic clipped separately")
    ema_decay: float = _f(0.995, "EMA of the policy weights; the EMA policy is evaluated/saved")
    hidden_dims: tuple[int, ...] = _f((256, 256, 256), "policy MLP hidden sizes")
    share_parameters: bool = _f(True, "one policy network for all agents (+ one-hot id)")
    condition: str = _f("binary", "condition tokens from the advantage (none: plain BC)",
                        CONDITIONS)
    policy_loss: str = _f("meanflow", "meanflow (VGM²P), flow_matching or mse (MLP BC; "
                          "cross-entropy for discrete actions)", POLICY_LOSSES)
    weighting: str = _f("none", "awr: weight rows by exp(A / (beta std A)), clipped "
                        "(advantage-weighted BC; with tokens too, a weighted VGM²P)",
                        WEIGHTINGS)
    awr_beta: float = _f(1.0, "temperature of awr weights, in units of the advantage std")
    awr_max_weight: float = _f(100.0, "clip of awr weights")
    n_bins: int = _f(4, "number of tokens of --condition quantile")
    guidance_scale: float = _f(2.0, "training CFG scale omega / (1 - kappa) baked into the "
                               "MeanFlow target")
    kappa: float = _f(0.5, "CFG-in-the-target mixing coefficient, in [0, 1)")
    cond_dropout: float = _f(0.1, "share of rows trained with the null token")
    # 0.25 (MeanFlow's): 0.5 / 0.75 gave 13.9 / 18.7 on hopper-3x1-medium-replay against the
    # defaults' 18.4 on the same 3 seeds, and 0.75 gave 31.2 against 32.0 on hopper-3x1-medium
    ratio_r_neq_t: float = _f(0.25, "share of MeanFlow rows with r < t")
    # MeanFlow's logit-normal(-0.4, 1.0); a larger scale draws the one-step jump's (r, t) = (0, 1)
    # more often, but 1.6 / 2 gave 15.6 / 16.2 on hopper-3x1-medium-replay against 18.4 (3 seeds)
    time_mu: float = _f(-0.4, "location of the logit-normal that the flow's training times "
                        "(r, t) are drawn from")
    time_sigma: float = _f(1.0, "scale of that logit-normal (> 0)")
    # 3: on tests/test_policy.py's bimodal toy a top frequency of 100 made training oscillate
    # (docs/design.md); on hopper-3x1-medium 1 and 10 gave 31.1 and 30.0 against 32.0 (3 seeds)
    time_max_freq: float = _f(3.0, "highest angular frequency of the policy's time embeddings "
                              "(geometric in [1, this])")
    test_guidance: float = _f(1.0, "test-time guidance w at evaluation (1 = off)")
    advantage: str = _f("gae", "advantage estimator", tuple(ESTIMATORS))
    gamma: float = _f(0.99, "discount")
    lam: float = _f(0.95, "GAE lambda")
    tau: float = _f(0.7, "expectile of the value regression")
    value_hidden: tuple[int, ...] = _f((256, 256), "critic MLP hidden sizes")
    value_lr: float = _f(3e-4, "critic AdamW learning rate")
    # 3000, not 500: tokens from an unfitted critic are noise (the advantageous share fell from
    # 0.85 to 0.40 over the first 5k iterations); hopper-3x1-medium 29.7 -> 32.0 normalised
    value_warmup: int = _f(3000, "critic-only iterations first (none if no advantage is used)")
    refresh_every: int = _f(500, "iterations between whole-dataset advantage refreshes")
    eval_every: int = _f(0, "policy steps between evaluations (0: steps / 5, so >= 5 of them)")
    eval_episodes: int = _f(10, "episodes per evaluation (0: no evaluation)")
    eval_seed: int = _f(10_000, "seed of the evaluation episodes (the same at every evaluation)")
    # auto: e = 0 (the mode) for discrete actions, sampled for continuous (policy.sampling.NOISE
    # has the measurements)
    eval_noise: str = _f("auto", "initial noise of evaluation actions: sample e ~ N(0, I), "
                         "zero e = 0, auto = zero for discrete actions and sample for "
                         "continuous", EVAL_NOISE)
    eval_steps: int = _f(1, "sampling steps at evaluation (flow matching needs ~10)")
    env: str = _f("", "environment spec for evaluation (default: the dataset's env)")
    log_every: int = _f(50, "iterations between metric lines")
    checkpoint_every: int = _f(500, "iterations between checkpoints")
    keep_checkpoints: int = _f(2, "checkpoints kept (older ones are deleted)")
    device: str = _f("auto", "cpu, cuda, cuda:<i> or auto")
    backend: str = _f("auto", "op backend of the policy layers", ("auto", "torch", "triton"))
    jvp: str = _f("fused", "MeanFlow JVP: fused (analytic) or func (torch.func.jvp)",
                  ("fused", "func"))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_type(f, getattr(self, f.name))
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices and not (f.name == "method" and value == ""):
                raise ValueError(f"{f.name}: expected one of {list(choices)}, found {value!r}")
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        self.value_hidden = tuple(int(h) for h in self.value_hidden)
        positive = ("batch_size", "refresh_every", "log_every", "checkpoint_every",
                    "keep_checkpoints", "eval_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected an int >= 1, found {getattr(self, name)}")
        for name in ("steps", "value_warmup", "eval_episodes", "eval_every", "n_bins"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected an int >= 0, found {getattr(self, name)}")
        for name in ("lr", "value_lr", "grad_clip", "guidance_scale", "test_guidance",
                     "awr_beta", "awr_max_weight"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name}: expected a finite number > 0, found {v}")
        for name in ("lr", "value_lr"):  # AdamW's first step divides lr by 1 - beta1 = 0.1
            if getattr(self, name) > _MAX_LR:
                raise ValueError(f"{name}: expected a number in (0, {_MAX_LR:.0e}] (AdamW's "
                                 f"step overflows float32 above), found {getattr(self, name)}")
        ranges = {"ema_decay": (0.0, 1.0, "[0, 1)"), "kappa": (0.0, 1.0, "[0, 1)"),
                  "cond_dropout": (0.0, 1.0, "[0, 1)"), "gamma": (0.0, 1.0 + 1e-12, "[0, 1]"),
                  "lam": (0.0, 1.0 + 1e-12, "[0, 1]"), "tau": (1e-12, 1.0, "(0, 1)"),
                  "ratio_r_neq_t": (0.0, 1.0 + 1e-12, "[0, 1]"),
                  "time_max_freq": (1.0, math.inf, "[1, inf)"),
                  "time_mu": (-math.inf, math.inf, "(-inf, inf)"),
                  "time_sigma": (1e-12, math.inf, "(0, inf)")}
        for name, (lo, hi, text) in ranges.items():
            v = getattr(self, name)
            if not (lo <= v < hi):
                raise ValueError(f"{name}: expected a value in {text}, found {v}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay: expected >= 0, found {self.weight_decay}")
        if not self.hidden_dims or min(self.hidden_dims) < 1:
            raise ValueError(f"hidden_dims: expected positive sizes, found {self.hidden_dims}")
        if not self.value_hidden or min(self.value_hidden) < 1:
            raise ValueError(f"value_hidden: expected positive sizes, found {self.value_hidden}")
        if self.condition == "quantile" and self.n_bins < 2:
            raise ValueError(f"n_bins: expected >= 2 quantile bins, found {self.n_bins}")
        if self.policy_loss == "mse" and self.condition != "none":
            raise ValueError(f"condition: the mse (MLP BC) policy takes no tokens; expected "
                             f"none, found {self.condition!r}")
        if self.test_guidance != 1.0 and self.condition == "none":
            raise ValueError(f"test_guidance: a policy without condition tokens (--condition "
                             f"none) has nothing to guide; expected 1, found "
                             f"{self.test_guidance}")
        if self.weighting == "awr" and self.policy_loss == "mse":
            raise ValueError("weighting: the mse (MLP BC) loss takes no row weights; expected "
                             "none, found 'awr'")

    @property
    def omega(self) -> float:
        """omega such that the effective guidance omega / (1 - kappa) equals guidance_scale."""
        return self.guidance_scale * (1.0 - self.kappa)

    @property
    def uses_critic(self) -> bool:
        """Whether the policy reads advantages (tokens or awr weights). The BC presets do not,
        so they fit no critic (earlier versions did: 3,000 warm-up iterations and a critic
        step beside every policy step, time a user's own BC would not spend)."""
        return self.condition != "none" or self.weighting == "awr"

    @property
    def warmup(self) -> int:
        """Critic-only iterations this run takes: ``value_warmup``, or 0 without a critic."""
        return self.value_warmup if self.uses_critic else 0

    @property
    def eval_interval(self) -> int:
        """Policy steps between evaluations (``eval_every``, or steps / 5 when 0)."""
        return self.eval_every or max(1, self.steps // 5)


_ALIASES = {"guidance": "guidance_scale"}   # names of earlier versions (config files, CLI)


def config_from(values: dict[str, Any], source: str = "options") -> TrainConfig:
    """A TrainConfig from ``values`` (a config file, saved config.json or the CLI): earlier
    field names are renamed, ``method`` fills the options it names that ``values`` leaves
    unset, and unknown keys are a one-line error naming ``source``."""
    values = {_ALIASES.get(k, k): v for k, v in values.items()}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{source}: unknown option {unknown[0]!r}; expected some of "
                         f"{sorted(known)}")
    method = values.get("method") or ""
    if method:
        if method not in METHODS:
            raise ValueError(f"method: expected one of {list(METHODS)}, found {method!r}")
        values = {**METHODS[method], **values}
    return TrainConfig(**values)


def _check_type(f: dataclasses.Field, value: Any) -> None:
    """A one-line error for a value of the wrong type (a TOML string for an int, say)."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    kind = type(default)
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind is tuple:
        ok = isinstance(value, (tuple, list)) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value)
    else:
        ok = isinstance(value, kind)
    if not ok:
        want = "a list of ints" if kind is tuple else kind.__name__
        raise ValueError(f"{f.name}: expected {want}, found {type(value).__name__} {value!r}")
