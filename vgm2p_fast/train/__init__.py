"""Training: the config (``config.py``), the loop (``loop.py``), evaluation during training
(``evaluation.py``), run folders and checkpoints (``runs.py``) and metrics (``metrics.py``)."""

from .config import METHODS, RESUMABLE, TrainConfig, config_from
from .evaluation import evaluate_policy
from .loop import build_policy, train

__all__ = ["METHODS", "RESUMABLE", "TrainConfig", "build_policy", "config_from",
           "evaluate_policy", "train"]
