"""``SegmentSettings``: the segmentation half of a ``kind: segment`` run (the run half is a RunConfig:
lr, epochs, batch_size, seed, weight_decay, warmup_ratio, max_grad_norm, precision, data_dir).

    lorabench segment --arm scratch full lora --r 4 8 --data-dir membrane/
    lorabench train --kind segment --task membrane --scenario arm=lora --scenario r=4

Arms (one per run): ``scratch`` a fresh U-Net trained on the target; ``full`` the source-pretrained
U-Net, every weight trained; ``decoder`` the pretrained U-Net with its encoder frozen; any adapter
variant name (``lora`` = LoRA-C, ``dora`` = DoRA-C, ``cp_lora`` = CP-LoRA, Minoccheri et al. 2025,
arXiv 2508.01772) adapts the pretrained U-Net's convolutions of ``targets`` with rank ``r``.
Every field is read as its type or refused with a ConfigError naming the fix, before any compute.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..adapters import registry
from ..config_types import coerce
from ..errors import ConfigError

#: The arms that are not an adapter variant: what trains, and whether the source is loaded.
PLAIN_ARMS = {"scratch": "a fresh U-Net, every weight trained on the target",
              "full": "the source-pretrained U-Net, every weight fine-tuned",
              "decoder": "the source-pretrained U-Net, encoder frozen, decoder and head fine-tuned"}
#: The paper's names of the conv adapters (Minoccheri et al. 2025, Sec. 2): the report's labels.
PAPER_NAMES = {"lora": "lora_c", "dora": "dora_c", "cp_lora": "cp_lora"}
TARGETS = ("all", "encoder", "decoder")
LOSSES = ("bce_dice", "bce", "dice")
FOREGROUNDS = ("dark", "bright")


@dataclass
class SegmentSettings:
    arm: str = "full"  # scratch, full, decoder, or an adapter variant (lora, dora, cp_lora)
    r: int | None = None  # adapter rank (adapter arms only; default 4)
    alpha: float | None = None  # adapter scaling alpha (adapter arms; unset: the variant's default)
    targets: str = "all"  # which convs an adapter wraps: all, encoder, decoder (the 1x1 head trains whole)
    base: int = 16  # U-Net width of the first level (channels double per level)
    depth: int = 4  # U-Net poolings
    patch: int = 128  # training patch side (a multiple of 2 ** depth)
    patches_per_image: int = 4  # random patches of each training image per epoch
    train_images: str = "0-19"  # positions (natural order of the file names) of the training images
    test_images: str = "20-29"  # ... of the test images (a contiguous block: neighbouring sections are alike)
    foreground: str = "dark"  # mask pixels < 128 are the structure (membrane); bright: >= 128
    loss: str = "bce_dice"  # bce + soft Dice, or either alone
    source_steps: int = 300  # source pretraining steps (synthetic membranes, lorabench.segmentation.synthetic)
    source_batch: int = 8  # synthetic patches per source step
    source_lr: float = 1e-3  # AdamW lr of source pretraining
    source_seed: int = 0  # the source model's seed (one pretrained model serves every target seed)

    def __post_init__(self) -> None:
        hints = {f.name: f.type for f in dataclasses.fields(self)}
        types = {"int": int, "int | None": int | None, "float | None": float | None, "str": str, "float": float}
        for name, hint in hints.items():
            setattr(self, name, coerce(f"scenario {name}", getattr(self, name), types[hint]))
        if self.arm in PLAIN_ARMS:
            if self.r is not None or self.alpha is not None:
                raise ConfigError(f"arm {self.arm} trains no adapter; drop r and alpha (they are for adapter arms)")
        else:
            if self.arm not in registry.names():
                raise ConfigError(f"arm {self.arm!r} is not {', '.join(PLAIN_ARMS)} or a registered adapter variant "
                                  f"(lora, dora, cp_lora, ...); e.g. --scenario arm=lora")
            if not registry.get(self.arm).wraps_layers:
                raise ConfigError(f"arm {self.arm}: the variant wraps no layer; use arm full or decoder instead")
            self.r = 4 if self.r is None else self.r
        for name in ("base", "depth", "patch", "patches_per_image", "source_steps", "source_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"scenario {name} must be >= 1, got {getattr(self, name)}")
        if self.r is not None and self.r < 1:
            raise ConfigError(f"scenario r must be >= 1, got {self.r}; e.g. r=4")
        if self.patch % 2 ** self.depth:
            raise ConfigError(f"patch {self.patch} is not a multiple of 2 ** depth = {2 ** self.depth}; use "
                              f"patch={max(1, self.patch // 2 ** self.depth) * 2 ** self.depth}")
        if self.base % min(8, self.base):
            raise ConfigError(f"base {self.base} must be a multiple of 8 (GroupNorm groups), or below 8")
        for name, allowed in (("targets", TARGETS), ("loss", LOSSES), ("foreground", FOREGROUNDS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"scenario {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.source_lr <= 0:
            raise ConfigError(f"scenario source_lr must be > 0, got {self.source_lr}; e.g. 1e-3")

    @property
    def is_adapter(self) -> bool:
        return self.arm not in PLAIN_ARMS

    @property
    def groups(self) -> int:
        """GroupNorm groups: 8, or one per channel of a U-Net narrower than 8."""
        return min(8, self.base)

    def source(self) -> dict[str, Any]:
        """What the pretrained source model depends on (its cache key)."""
        keys = ("base", "depth", "patch", "foreground", "loss", "source_steps", "source_batch", "source_lr",
                "source_seed")
        return {k: getattr(self, k) for k in keys}

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def label(s: dict) -> str:
    """The report row: ``segment:full``, ``segment:lora_c r4``, ``segment:cp_lora r8 (encoder)``."""
    arm = s.get("arm")
    if arm in PLAIN_ARMS:
        return f"segment:{arm}"
    where = "" if s.get("targets", "all") == "all" else f" ({s.get('targets')})"
    return f"segment:{PAPER_NAMES.get(arm, arm)} r{s.get('r')}{where}"
