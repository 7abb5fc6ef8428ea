"""``lorabench variants``: every variant (structure), initialisation and optimisation rule, with
their options and defaults."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from .. import adapters
from ..adapters.lora import INITS, describe_init
from ..adapters.rules import RULES, RuleOptions


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("variants", help="list the variants and their options",
                              description="List every registered variant, its paper and its options with defaults.")
    p.set_defaults(func=cmd_variants)
    return p


def variant_facts() -> list[dict[str, Any]]:
    """One record per registered variant, for ``lorabench variants`` and the documentation's variants
    page: ``name``, ``cls``, ``description``, ``options`` ({option: default}, rule options last),
    ``packs`` and ``conv`` (None when runs of it pack / it adapts ``nn.Conv2d``, else why not)."""
    rule_fields = {f.name for f in dataclasses.fields(RuleOptions)}
    facts = []
    for name in adapters.names():
        cls = adapters.get(name)
        fields = sorted(dataclasses.fields(cls.Options), key=lambda f: f.name in rule_fields)  # rule options last
        facts.append({"name": name, "cls": cls,
                      "description": cls.description or (cls.__doc__ or "").strip().splitlines()[0],
                      "options": {f.name: _default(f) for f in fields}, "packs": cls.unpackable(),
                      "conv": adapters.conv.conv_support(cls)})
    return facts


def describe_variants() -> str:
    """The three axes: structures (variants), initialisations (``init=``), optimisation rules
    (``optimizer=``); the last two combine with any LoRA-family structure."""
    blocks = ["structures (--variant NAME; options: --opt KEY=VALUE)"]
    for fact in variant_facts():
        opts = ", ".join(f"{key}={value!r}" for key, value in fact["options"].items())
        why, no_conv = fact["packs"], fact["conv"]
        packs = "yes (sweep --pack K trains such runs over one shared base)" if why is None else f"no: {why}"
        conv = "yes" if no_conv is None else f"no: {no_conv}"
        blocks.append(f"{fact['name']}\n    {fact['description']}\n"
                      f"    options: {opts or '(none)'}\n    packs: {packs}\n    nn.Conv2d: {conv}")
    width = max(map(len, [*INITS, *RULES]))
    blocks.append("\ninitialisations (--opt init=NAME, with any variant that has an init option)")
    blocks += [f"    {name:<{width}}  {describe_init(name)}" for name in sorted(INITS)]
    blocks.append("\noptimisation rules (--opt optimizer=NAME, with any variant that has an optimizer option)")
    for name, rule in RULES.items():
        defaults = {f.name: f.default for f in dataclasses.fields(RuleOptions)}
        opts = ", ".join(f"{o}={defaults[o]!r}" for o in rule.options)
        blocks.append(f"    {name:<{width}}  {rule.description}" + (f"; options: {opts}" if opts else ""))
    return "\n".join(blocks)


def _default(f) -> Any:
    import dataclasses

    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def cmd_variants(args: argparse.Namespace) -> int:
    print(describe_variants())
    return 0
