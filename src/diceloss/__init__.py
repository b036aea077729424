"""diceloss: Dice-family segmentation losses and overlap metrics for PyTorch."""

from . import backends, functional, heads, metrics
from ._checks import set_value_checks
from .blob import BlobLoss
from .boundary import BoundaryLoss
from .calibration_loss import CalibrationLoss
from .cldice import ClDiceLoss, DiceClDiceLoss
from .deep_supervision import DeepSupervisionLoss
from .hausdorff import HausdorffDTLoss
from .losses import DiceCELoss, DiceFocalLoss, DiceLoss, GeneralizedDiceLoss, JaccardLoss, TverskyLoss
from .lovasz import LovaszLoss
from .skeleton_recall import DiceCESkeletonRecallLoss, SkeletonRecallLoss
from .stats import OverlapStats, compute_stats
from .unified_focal import UnifiedFocalLoss
from .wasserstein import GeneralizedWassersteinDiceLoss

__version__ = "0.1.0"

__all__ = [
    "DiceLoss",
    "JaccardLoss",
    "TverskyLoss",
    "GeneralizedDiceLoss",
    "DiceCELoss",
    "DiceFocalLoss",
    "HausdorffDTLoss",
    "LovaszLoss",
    "ClDiceLoss",
    "DiceClDiceLoss",
    "SkeletonRecallLoss",
    "DiceCESkeletonRecallLoss",
    "BoundaryLoss",
    "CalibrationLoss",
    "BlobLoss",
    "UnifiedFocalLoss",
    "GeneralizedWassersteinDiceLoss",
    "DeepSupervisionLoss",
    "compute_stats",
    "OverlapStats",
    "set_value_checks",
    "backends",
    "functional",
    "heads",
    "metrics",
]
