"""diceloss: Dice-family segmentation losses and overlap metrics for PyTorch."""

from . import functional, metrics
from ._inputs import set_value_checks
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
    "compute_stats",
    "OverlapStats",
    "set_value_checks",
    "functional",
    "metrics",
]
from .deep_supervision import DeepSupervisionLoss; __all__ += ["DeepSupervisionLoss"]  # noqa: E402, E702, I001
