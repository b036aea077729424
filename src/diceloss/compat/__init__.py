"""Drop-in replacements for the Dice-family losses of other libraries, on diceloss's statistics layer.

* :mod:`diceloss.compat.monai`: ``DiceLoss``, ``GeneralizedDiceLoss``, ``TverskyLoss``, ``DiceCELoss``,
  ``DiceFocalLoss`` with MONAI 1.6's constructor arguments and values, quirks included.
* :mod:`diceloss.compat.smp`: ``DiceLoss``, ``JaccardLoss``, ``TverskyLoss`` with
  segmentation_models_pytorch 0.6's arguments and values (batch-level statistics, absent-class zeroing,
  its ``2 * smooth``).

Swapping the import keeps the numbers (to float rounding) and runs the sums on the fastest diceloss
backend (``backend="auto"``), without the one-hot target and the full-size temporaries of the originals.
The differences that remain are listed in each module's docstring and in docs/compat.md.

Example:
    >>> import torch
    >>> from diceloss.compat.monai import DiceLoss        # was: from monai.losses import DiceLoss
    >>> loss = DiceLoss(softmax=True, to_onehot_y=True)
    >>> x = torch.randn(2, 3, 8, 8)
    >>> t = torch.randint(0, 3, (2, 1, 8, 8))
    >>> loss(x, t).shape
    torch.Size([])
"""

from __future__ import annotations

from . import monai, smp

__all__ = ["monai", "smp"]
