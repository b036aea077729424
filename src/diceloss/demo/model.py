"""A small U-Net (Ronneberger et al., 2015) for 2D images or 3D volumes.

GroupNorm rather than BatchNorm: its output for a sample does not depend on the other samples of the
batch, so training on the shards of a batch in several processes gives the same network as training
on the whole batch in one (see :mod:`diceloss.demo.train`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _conv(dims: int):
    return nn.Conv2d if dims == 2 else nn.Conv3d


def _block(dims: int, cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 convolutions, each with GroupNorm and LeakyReLU."""
    conv = _conv(dims)
    groups = 4 if cout % 4 == 0 else 1
    return nn.Sequential(
        conv(cin, cout, 3, padding=1, bias=False),
        nn.GroupNorm(groups, cout),
        nn.LeakyReLU(0.01, inplace=True),
        conv(cout, cout, 3, padding=1, bias=False),
        nn.GroupNorm(groups, cout),
        nn.LeakyReLU(0.01, inplace=True),
    )


class UNet(nn.Module):
    """U-Net with ``depth`` resolution levels; ``width`` channels at the top, doubling per level.

    Args:
        dims: 2 or 3 spatial dimensions.
        in_channels, num_classes: channels of the input and of the logits.
        width: channels of the first level.
        depth: number of levels; the spatial size must be divisible by 2 ** (depth - 1).
        deep_supervision: also return logits at the lower decoder levels (a list, full resolution
            first, each level half the size of the one before), for :class:`diceloss.DeepSupervisionLoss`.

    Shape:
        input (B, in_channels, *S) -> logits (B, num_classes, *S), or a list of
        (B, num_classes, *S / 2**i) with ``deep_supervision``.

    Example:
        >>> import torch
        >>> net = UNet(2, 1, 4, width=8, depth=3)
        >>> tuple(net(torch.randn(2, 1, 32, 32)).shape)
        (2, 4, 32, 32)
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        num_classes: int,
        *,
        width: int = 16,
        depth: int = 3,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        if depth < 2:
            raise ValueError(f"depth must be >= 2, got {depth}")
        conv = _conv(dims)
        up = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
        self.depth = depth
        self.deep_supervision = deep_supervision
        chans = [width * 2**i for i in range(depth)]
        self.down = nn.ModuleList(
            [_block(dims, in_channels, chans[0])]
            + [_block(dims, chans[i - 1], chans[i]) for i in range(1, depth)]
        )
        self.pool = (nn.MaxPool2d if dims == 2 else nn.MaxPool3d)(2)
        self.up = nn.ModuleList([up(chans[i], chans[i - 1], 2, stride=2) for i in range(depth - 1, 0, -1)])
        self.fuse = nn.ModuleList(
            [_block(dims, 2 * chans[i - 1], chans[i - 1]) for i in range(depth - 1, 0, -1)]
        )
        # heads: full resolution first, then the lower decoder levels (used with deep supervision only)
        n_heads = depth - 1 if deep_supervision else 1
        self.heads = nn.ModuleList([conv(chans[i], num_classes, 1) for i in range(n_heads)])

    @property
    def stride(self) -> int:
        return 2 ** (self.depth - 1)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        bad = [s for s in x.shape[2:] if s % self.stride]
        if bad:
            raise ValueError(
                f"UNet of depth {self.depth} needs spatial sizes divisible by {self.stride}, got "
                f"{tuple(x.shape[2:])}"
            )
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        decoded = []  # lowest resolution first
        x = skips.pop()
        for up, fuse in zip(self.up, self.fuse):
            x = fuse(torch.cat([up(x), skips.pop()], dim=1))
            decoded.append(x)
        if not self.deep_supervision:
            return self.heads[0](decoded[-1])
        return [head(feat) for head, feat in zip(self.heads, reversed(decoded))]
