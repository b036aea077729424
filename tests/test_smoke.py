import torch

import diceloss


def test_public_names_import():
    for name in ("DiceLoss", "JaccardLoss", "TverskyLoss", "GeneralizedDiceLoss", "DiceCELoss", "DiceFocalLoss"):
        assert callable(getattr(diceloss, name))


def test_dice_loss_known_value():
    x = torch.zeros(1, 2, 4)
    t = torch.tensor([[0, 0, 1, 1]])
    assert abs(float(diceloss.DiceLoss()(x, t)) - 0.5) < 1e-5  # smoothing moves it by 1.25e-6
