"""The source task of the transfer study: synthetic cell-membrane images with exact masks.

    x, y = membranes(8, 128, torch.Generator().manual_seed(0))   # (8, 1, 128, 128) image, membrane mask

Each image is a random Voronoi tessellation (uniform seeds, 4-16 cells per 128 x 128) whose
cell walls are drawn as dark membranes of random width (1.2-3 px) that wander (the distance field
is bent by smooth noise), over cells of random brightness with smooth texture, a few dark
"organelle" blobs inside cells that are NOT membrane (the distractors real EM has: mitochondria,
vesicles), fine dark specks, then a Gaussian blur and pixel noise. The mask is the membrane, known exactly; the
same generator state gives the same images bit for bit.

Why this source (the honest choice for lorabench): the study mirrors Minoccheri et al. 2025
(arXiv 2508.01772), where a U-Net pretrained on one hematoma type (traumatic brain injury CT, 124
patients, many institutions) is adapted to a related, scarce target (aneurysmal SAH, 30 patients).
Its sources are not public. Here the plentiful source is a generated look-alike of the target's
structure (membranes between cells), and the scarce target is the 20 real labelled ISBI 2012 EM
images. As in the paper, source and target share the task's geometry (thin dark boundaries vs
blob-like hematomas) but not the image statistics (texture, noise, contrast), so the pretrained
filters are useful but need adapting. Limits of the analogy: the gap here is synthetic -> real
(the paper's is one real pathology -> another on one modality, CT), our images are 2-D EM patches
rather than CT slices of a multi-view model, and the source is unlimited and noise-free in its
labels. The source never sees a target image, so no test information leaks into pretraining.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _smooth_noise(n: int, size: int, cells: int, g: torch.Generator) -> torch.Tensor:
    """(n, 1, size, size) noise in about [-1, 1], smooth over ``size / cells`` pixels."""
    low = torch.rand(n, 1, cells, cells, generator=g) * 2 - 1
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (n, 1, H, W) with reflected borders."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1))


def membranes(n: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` synthetic images (n, 1, size, size) in [0, 1] and their membrane masks (float 0/1)."""
    images, masks = [], []
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    pixels = torch.stack([yy.flatten(), xx.flatten()], 1)  # (P, 2)
    for _ in range(n):
        g = generator
        area = size * size / 128 ** 2
        k = int(torch.randint(int(4 * area) + 2, int(16 * area) + 3, (1,), generator=g))
        seeds = torch.rand(k, 2, generator=g) * (size + 32) - 16  # cells may run off the edges
        d = torch.cdist(pixels, seeds)  # (P, k)
        two = d.topk(2, dim=1, largest=False)
        gap = (two.values[:, 1] - two.values[:, 0]).view(size, size)  # 0 on a wall, grows inside a cell
        gap = gap + 0.5 * _smooth_noise(1, size, 6, g)[0, 0]  # wavy walls
        width = 1.2 + 1.8 * float(torch.rand(1, generator=g))
        wall = gap < width  # (size, size) the membrane
        cell = two.indices[:, 0].view(size, size)
        level = 0.55 + 0.3 * torch.rand(k, generator=g)  # each cell's brightness
        img = level[cell] + 0.08 * _smooth_noise(1, size, 16, g)[0, 0]
        specks = _smooth_noise(1, size, size // 3, g)[0, 0] > 0.8  # fine dark texture (vesicles)
        img = torch.where(specks, img * 0.7, img)
        blobs = _smooth_noise(1, size, 10, g)[0, 0] > 0.75  # dark organelles, not membrane
        img = torch.where(blobs & ~wall, img * 0.45, img)
        dark = 0.1 + 0.2 * float(torch.rand(1, generator=g))
        img = torch.where(wall, torch.full_like(img, dark), img)
        img = _blur(img.view(1, 1, size, size), 0.6 + 0.8 * float(torch.rand(1, generator=g)))
        img = img + (0.02 + 0.06 * float(torch.rand(1, generator=g))) * torch.randn(img.shape, generator=g)
        images.append(img.clamp(0, 1))
        masks.append(wall.float().view(1, 1, size, size))
    return torch.cat(images), torch.cat(masks)
