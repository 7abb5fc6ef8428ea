"""Image/mask folders: read, check, split, and cut into training patches.

    folder/image/<stem>.png   grayscale images (an RGB file is read as its luminance)
    folder/label/<stem>.png   masks of the same size (``mask/``, ``masks/``, ``labels/`` also read)
    folder/SHA256SUMS         optional: ``<sha256>  <relative path>`` lines, checked when present

    pairs = read_folder("membrane/")              # [Pair(stem, image (H, W) float in [0, 1], mask bool)]
    train, test = split(pairs, "0-19", "20-29")   # positions in the natural order of the stems

Masks are thresholded at 128; ``foreground`` "dark" makes the pixels below it the structure to
segment (the membranes of the ISBI 2012 labels, where 255 marks cell interiors). A mask with more
than ``MAX_GRAY`` of its pixels between 16 and 240 is not a binary mask (a photo, a soft label, a
lossy file) and is refused rather than silently thresholded. Pillow reads the files (``pip install
lorabench[vision]``); nothing but PNG/TIFF/BMP images and the checksum text is read from disk.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError, DataError

IMAGE_DIRS = ("image", "images")
MASK_DIRS = ("label", "labels", "mask", "masks")
SUFFIXES = (".png", ".tif", ".tiff", ".bmp")
MAX_GRAY = 0.01  #: the largest fraction of a mask's pixels allowed strictly between 16 and 240
THRESHOLD = 128


@dataclass
class Pair:
    stem: str
    image: torch.Tensor  # (H, W) float32 in [0, 1]
    mask: torch.Tensor  # (H, W) bool, True = foreground


def pillow():
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading image/mask folders needs Pillow: pip install lorabench[vision]") from None
    return Image


def natural_key(stem: str) -> list:
    """"2" before "10": digits compare as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", stem)]


def _sub(folder: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (folder / name).is_dir():
            return folder / name
    raise DataError(f"{folder} has no {what} folder ({' or '.join(n + '/' for n in names)}); put the images in "
                    f"{folder}/image/ and the masks, same file names, in {folder}/label/")


def _files(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in SUFFIXES:
            if p.stem in found:
                raise DataError(f"{folder} has two images named {p.stem} ({found[p.stem].name}, {p.name}); keep one")
            found[p.stem] = p
    return found


def check_sums(folder: Path) -> int:
    """Check ``folder/SHA256SUMS`` when there is one; the number of files checked (0 without it)."""
    sums = folder / "SHA256SUMS"
    if not sums.is_file():
        return 0
    bad, n = [], 0
    for i, line in enumerate(sums.read_text().splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.strip().partition("  ")
        if not re.fullmatch(r"[0-9a-f]{64}", digest) or not name:
            raise DataError(f"{sums} line {i} is not '<sha256>  <path>': {line[:80]!r}")
        path = folder / name.lstrip("*")
        if not path.is_file():
            bad.append(f"{name} (missing)")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            bad.append(f"{name} (changed)")
        n += 1
    if bad:
        raise DataError(f"{folder}: {len(bad)} file(s) differ from SHA256SUMS: {', '.join(bad[:5])}; restore the "
                        "original files, or delete SHA256SUMS if the edit is intended")
    return n


def _gray(Image, path: Path) -> torch.Tensor:
    """(H, W) uint8: the file's luminance."""
    try:
        with Image.open(path) as im:
            gray = im.convert("L")
            return torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8).view(gray.height, gray.width)
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def read_folder(folder: str | Path, foreground: str = "dark") -> list[Pair]:
    """Every image of ``folder`` with its mask, in the natural order of the stems (checked: pairs,
    sizes, binary masks, SHA256SUMS)."""
    if foreground not in ("dark", "bright"):
        raise DataError(f"foreground must be dark or bright, got {foreground!r}")
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"image/mask folder {folder} does not exist; pass --data-dir FOLDER (with image/ and label/)")
    Image = pillow()
    images, masks = _files(_sub(folder, IMAGE_DIRS, "image")), _files(_sub(folder, MASK_DIRS, "mask"))
    if not images:
        raise DataError(f"{folder}: no images ({', '.join(SUFFIXES)}) in its image folder")
    lone = sorted(set(images) ^ set(masks), key=natural_key)
    if lone:
        which = [f"{s} ({'no mask' if s in images else 'no image'})" for s in lone[:5]]
        raise DataError(f"{folder}: {len(lone)} file(s) without a partner: {', '.join(which)}; every image needs a "
                        "mask of the same name and the other way round")
    check_sums(folder)
    pairs = []
    for stem in sorted(images, key=natural_key):
        image, mask = _gray(Image, images[stem]), _gray(Image, masks[stem])
        if image.shape != mask.shape:
            raise DataError(f"{folder}: {stem}: image is {image.shape[1]}x{image.shape[0]}, mask "
                            f"{mask.shape[1]}x{mask.shape[0]}; a mask must have its image's size")
        gray = ((mask > 16) & (mask < 240)).float().mean().item()
        if gray > MAX_GRAY:
            raise DataError(f"{folder}: mask {masks[stem].name} has {gray:.1%} gray pixels (more than {MAX_GRAY:.0%} "
                            "between 16 and 240): not a binary mask; save masks as 0/255 PNGs")
        fg = mask < THRESHOLD if foreground == "dark" else mask >= THRESHOLD
        pairs.append(Pair(stem, image.float() / 255.0, fg))
    return pairs


def parse_range(text: str, n: int, what: str) -> list[int]:
    """"0-19" or "0-4,8,10-12" -> positions, each < n."""
    out: list[int] = []
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise DataError(f"{what} {text!r} is not a range of image positions; write e.g. 0-19 or 0-4,8")
        a, b = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if b < a or b >= n:
            raise DataError(f"{what} {text!r}: positions run 0..{n - 1} ({n} images), got {a}-{b}")
        out.extend(range(a, b + 1))
    return out


def split(pairs: list[Pair], train: str, test: str) -> tuple[list[Pair], list[Pair]]:
    """The training and test images at the positions ``train`` and ``test``; they must not overlap."""
    tr, te = parse_range(train, len(pairs), "train_images"), parse_range(test, len(pairs), "test_images")
    both = sorted(set(tr) & set(te))
    if both:
        raise DataError(f"train_images and test_images share position(s) {both[:5]}; give disjoint blocks")
    return [pairs[i] for i in tr], [pairs[i] for i in te]


def patches(pairs: list[Pair], size: int, per_image: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_image`` random ``size`` x ``size`` crops of each pair, each flipped and rotated by a
    random multiple of 90 degrees (label-preserving; the paper's augmentation is heavier, with
    elastic deformations): images (N, 1, size, size) float, masks (N, 1, size, size) float 0/1."""
    xs, ys = [], []
    for pair in pairs:
        h, w = pair.image.shape
        if h < size or w < size:
            raise DataError(f"image {pair.stem} is {w}x{h}, smaller than the {size}x{size} patch; lower patch")
        for _ in range(per_image):
            i = int(torch.randint(h - size + 1, (1,), generator=generator))
            j = int(torch.randint(w - size + 1, (1,), generator=generator))
            k, flip = int(torch.randint(4, (1,), generator=generator)), bool(torch.randint(2, (1,), generator=generator))
            x, y = pair.image[i:i + size, j:j + size], pair.mask[i:i + size, j:j + size].float()
            x, y = torch.rot90(x, k), torch.rot90(y, k)
            if flip:
                x, y = x.flip(-1), y.flip(-1)
            xs.append(x)
            ys.append(y)
    return torch.stack(xs).unsqueeze(1), torch.stack(ys).unsqueeze(1)


def folder_fingerprint(folder: str | Path) -> dict:
    """{"source": "images", "files": {"image": sha256, "label": sha256}}: digests over the sorted
    (name, sha256) of each sub-folder's image files, so the same files anywhere give the same id."""
    folder = Path(folder).expanduser()
    out = {}
    for names, what in ((IMAGE_DIRS, "image"), (MASK_DIRS, "mask")):
        sub = _sub(folder, names, what)
        h = hashlib.sha256()
        for stem, path in sorted(_files(sub).items()):
            h.update(f"{path.name}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
        out[what] = f"sha256:{h.hexdigest()}"
    return {"source": "images", "files": out}


def default_folder(task: str) -> Path:
    """The image/mask folder of ``task`` when --data-dir is not given: ``$LORABENCH_SEGMENTATION_DIR/<task>``,
    ``./segmentation/<task>``, then ``../shared/data/segmentation/<task>`` (from the working directory)."""
    roots = [Path(os.environ["LORABENCH_SEGMENTATION_DIR"])] if os.environ.get("LORABENCH_SEGMENTATION_DIR") else []
    roots += [Path("segmentation"), Path("..") / "shared" / "data" / "segmentation"]
    for root in roots:
        if (root / task).is_dir():
            return (root / task).resolve()
    tried = ", ".join(str((r / task).resolve()) for r in roots)
    raise ConfigError(f"no image/mask folder for task {task} (tried {tried}); pass --data-dir FOLDER (with image/ "
                      "and label/ inside)")
