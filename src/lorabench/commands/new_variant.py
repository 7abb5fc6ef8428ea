"""``lorabench new-variant NAME --out FILE``: a commented starting file for a variant of your own
(options dataclass with checked defaults, the three hooks most methods override, docstring slots
for the paper and the update rule), which passes ``lorabench check-variant`` as written."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..outputs import check_output_file

TEMPLATE = '''"""{title}: <one line: what it changes about LoRA>.

<Authors> <year>, "<paper title>", arXiv <id>; official code: <url>.

    h = W0 x + s * B A x,   A: (r, in), B: (out, r),   s = alpha / r      <- write your update rule here

Defaults follow <the paper, Sec. N / the official code's config>; say where and why you deviate.
Check it: ``lorabench check-variant {name} --plugin {file}``; benchmark it:
``lorabench sweep my_sweep.yaml`` with ``plugins: [{file}]`` under ``base:``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lorabench.adapters import Variant, register
from lorabench.errors import VariantError


@dataclass
class {cls}Options:
    r: int = 8  # rank
    alpha: float = 8.0  # scale s = alpha / r

    def __post_init__(self):  # refuse bad values with a message that names the fix
        if not (isinstance(self.r, int) and self.r > 0):
            raise VariantError(f"r must be a positive integer, got {{self.r!r}}; e.g. r=8")
        if not self.alpha > 0:
            raise VariantError(f"alpha must be > 0, got {{self.alpha!r}}")


@register("{name}")
class {cls}(Variant):
    """{title}: plain LoRA as a starting point; change ``__init__``, ``delta`` and ``delta_weight``."""

    description = "{title}: <one line for `lorabench variants`>"
    Options = {cls}Options
    identity_at_init = True  # B = 0 at init: the adapted model starts as the base model

    def __init__(self, in_features, out_features, opts, shared=None):
        super().__init__(in_features, out_features, opts, shared)
        self.lora_A = nn.Parameter(torch.empty(opts.r, in_features))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(out_features, opts.r))  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    @property
    def scale(self) -> float:
        return self.opts.alpha / self.opts.r

    # hook 1: the change to the layer's output (the layer adds it to W0 x)
    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.lora_A.T.to(x.dtype)) @ self.lora_B.T.to(x.dtype) * self.scale  # (B, T, out)

    # hook 2: the same change as a weight, (out, in): merge, unmerge and export use it
    def delta_weight(self) -> torch.Tensor:
        return self.scale * self.lora_B @ self.lora_A

    # hook 3: trainable parameters per adapted layer, from the paper (check-variant compares)
    @classmethod
    def num_trainable_formula(cls, in_features: int, out_features: int, opts) -> int:
        return opts.r * (in_features + out_features)
'''


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("new-variant", help="write a starting file for a variant of your own",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("name", help="the variant's name (letters, digits, _), e.g. my_lora")
    p.add_argument("--out", required=True, metavar="FILE.py", help="the file to write (must not exist)")
    p.set_defaults(func=cmd_new_variant)
    return p


def cmd_new_variant(args: argparse.Namespace) -> int:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", args.name):
        raise ConfigError(f"variant name {args.name!r}: use lowercase letters, digits and _, starting with a letter")
    out = Path(args.out)
    if out.exists():
        raise ConfigError(f"--out {out} exists; lorabench never writes over a file: pass a new file name")
    check_output_file(out)
    cls = "".join(part.capitalize() for part in args.name.split("_"))
    out.write_text(TEMPLATE.format(name=args.name, cls=cls, title=cls, file=out.name))
    print(f"wrote {out}; next: lorabench check-variant {args.name} --plugin {out}")
    return 0
