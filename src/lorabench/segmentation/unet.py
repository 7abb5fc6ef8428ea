"""A small U-Net for binary segmentation: lorabench's own backbone of the ``segment`` kind.

Ronneberger, Fischer & Brox 2015, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI, arXiv 1505.04597 (official code: Caffe, lmb.informatik.uni-freiburg.de;
no PyTorch release). The layout of their Fig. 1, scaled down:

    encoder  level l = 0..depth: two 3x3 convs (padding 1) -> norm -> ReLU, width base * 2^l,
             2x2 max pooling between levels
    decoder  level l = depth-1..0: 2x upsampling + "up-conv" (here bilinear upsampling and a 1x1
             conv halving the channels), concatenation with the encoder's level-l output (skip
             connection), two 3x3 convs -> norm -> ReLU
    head     a 1x1 conv to one channel: the logit of "foreground" per pixel

Departures from the paper, and why: padded convolutions (the output has the input's size, so a
tile needs no mirrored border), GroupNorm after each conv (the paper has no normalization; a norm
layer is today's standard and GroupNorm is independent of the batch, which is 4-8 patches on a
CPU, and keeps no running statistics that a frozen base would still change), and bilinear
upsampling + 1x1 conv in place of the 2x2 transposed conv, so every learnable layer of the
network is an ``nn.Conv2d`` that a conv adapter can target (``conv_names``).

Parameters: base 16 / depth 4 -> 1.81M; base 32 / depth 4 -> 7.24M; base 8 / depth 2 -> 28K (tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class UNetShape:
    """The architecture: the first level's width, the number of poolings, the norm's groups."""

    base: int = 16
    depth: int = 4
    groups: int = 8
    in_channels: int = 1

    def __post_init__(self) -> None:
        for name in ("base", "depth", "groups", "in_channels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"U-Net {name} must be an integer >= 1, got {v!r}; e.g. base=16 depth=4")
        if self.base % self.groups:
            raise ConfigError(f"U-Net base width {self.base} is not a multiple of its {self.groups} norm groups; "
                              f"use base={self.groups * max(1, self.base // self.groups)} or groups dividing it")

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this (one halving per level)."""
        return 2 ** self.depth


class DoubleConv(nn.Sequential):
    """(3x3 conv -> GroupNorm -> ReLU) x 2: one level of the U-Net."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.ReLU(inplace=True))


class Up(nn.Module):
    """2x bilinear upsampling, then a 1x1 conv halving the channels (the paper's "up-conv")."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))


class UNet(nn.Module):
    """``UNet(UNetShape(base, depth))``: images (B, C, H, W) -> foreground logits (B, 1, H, W);
    H and W must be multiples of ``2 ** depth``."""

    def __init__(self, shape: UNetShape = UNetShape()):
        super().__init__()
        self.shape = shape
        widths = [shape.base * 2 ** level for level in range(shape.depth + 1)]
        self.down = nn.ModuleList(DoubleConv(shape.in_channels if level == 0 else widths[level - 1], w, shape.groups)
                                  for level, w in enumerate(widths))
        self.up = nn.ModuleList(Up(widths[level + 1], widths[level]) for level in range(shape.depth))
        self.dec = nn.ModuleList(DoubleConv(2 * widths[level], widths[level], shape.groups)
                                 for level in range(shape.depth))
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.shape.multiple
        if h % m or w % m:
            raise ValueError(f"U-Net of depth {self.shape.depth} takes sides that are multiples of {m}, got {h}x{w}")
        skips = []
        for level, block in enumerate(self.down):
            x = block(x)  # (B, base * 2^level, H / 2^level, W / 2^level)
            if level < self.shape.depth:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        for level in reversed(range(self.shape.depth)):
            x = self.dec[level](torch.cat([skips[level], self.up[level](x)], dim=1))
        return self.head(x)  # (B, 1, H, W)

    def conv_names(self, part: str = "all") -> list[str]:
        """Full names of the ``nn.Conv2d`` layers of ``part``: all, encoder (down path and
        bottleneck), decoder (up-convs and decoder levels) or head."""
        prefixes = {"all": ("down.", "up.", "dec.", "head"), "encoder": ("down.",), "decoder": ("up.", "dec."),
                    "head": ("head",)}
        if part not in prefixes:
            raise ConfigError(f"U-Net part must be one of {', '.join(prefixes)}, got {part!r}")
        return [n for n, m in self.named_modules() if isinstance(m, nn.Conv2d) and n.startswith(prefixes[part])]


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
