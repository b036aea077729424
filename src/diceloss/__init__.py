"""diceloss: Dice-family segmentation losses and overlap metrics for PyTorch."""

from . import backends, functional, heads, metrics
from ._checks import set_value_checks
from .deep_supervision import DeepSupervisionLoss
from .losses import DiceCELoss, DiceFocalLoss, DiceLoss, GeneralizedDiceLoss, JaccardLoss, TverskyLoss
from .stats import OverlapStats, compute_stats

__version__ = "0.1.0"

__all__ = [
    "DiceLoss",
    "JaccardLoss",
    "TverskyLoss",
    "GeneralizedDiceLoss",
    "DiceCELoss",
    "DiceFocalLoss",
    "DeepSupervisionLoss",
    "compute_stats",
    "OverlapStats",
    "set_value_checks",
    "backends",
    "functional",
    "heads",
    "metrics",
]
