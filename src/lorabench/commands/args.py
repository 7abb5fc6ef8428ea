"""Command-line flags generated from a config dataclass: one source for every run setting.

Every ``RunConfig`` field is a flag ``--field-name`` with its type, its choices and its help
line (the field's ``setting(...)``), in the help section its ``group`` names; ``lorabench train``
gets them all, ``lorabench sweep`` gets them as overrides for every run. A new field is a flag,
a sweep override and a help line at once, with no edit here.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from typing import Any

import yaml

from ..config import RunConfig, load_yaml, parse_yaml
from ..errors import ConfigError, UsageError

#: Mapping fields given as repeated ``KEY=VALUE`` flags: ``options`` is ``--opt``, ``scenario`` ``--scenario``.
SPECIAL = {"options": "opt", "scenario": "scenario"}


class Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so errors stay one line, and
    that reads ``--lr -1e-3`` as a value (argparse alone knows only ``-1`` and ``-.5``), so the
    config can say what is wrong with it."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")

    def error(self, message: str):
        raise UsageError(f"{message}; see `{self.prog} --help`")


def flag_name(f: dataclasses.Field) -> str:
    return "--" + (f.metadata.get("flag") or f.name).replace("_", "-")


def _kind(hint: Any) -> type:
    """The scalar type a flag parses: bool, int, float or str (lists, unions with str: str)."""
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    kinds = [a for a in (typing.get_args(hint) if is_union else (hint,)) if a is not type(None)]
    kinds = [typing.get_origin(k) or k for k in kinds]
    if kinds == [bool]:
        return bool
    if len(kinds) == 1 and kinds[0] in (int, float):
        return kinds[0]
    return str


def _default_text(f: dataclasses.Field) -> str:
    if f.default is dataclasses.MISSING or f.default in (None, False):
        return ""
    return f" [{f.default:g}]" if isinstance(f.default, float) else f" [{f.default}]"


def add_config_flags(parser: argparse.ArgumentParser, config_cls: type = RunConfig, *, exclude: tuple = (),
                     show_defaults: bool = True, default: Any = argparse.SUPPRESS) -> list[str]:
    """Add a flag per field of ``config_cls`` (but ``exclude``), grouped as the fields say.

    ``default`` is what an unset flag leaves in the namespace (SUPPRESS: nothing, so only the flags
    given override a config file). Returns the dests added (field names; ``opt`` for options)."""
    hints = typing.get_type_hints(config_cls)
    groups: dict[str, Any] = {}
    dests = []
    for f in dataclasses.fields(config_cls):
        if f.name in exclude:
            continue
        meta = f.metadata
        title = meta.get("group") or "settings"
        group = groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
        help_text = meta.get("help", "") + (_default_text(f) if show_defaults else "")
        kw: dict[str, Any] = {"help": help_text, "default": default}
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        if f.name in SPECIAL:
            group.add_argument(flag_name(f), action="append", dest=SPECIAL[f.name], **kw)
            dests.append(SPECIAL[f.name])
            continue
        kind = _kind(hints[f.name])
        if meta.get("repeat"):
            group.add_argument(flag_name(f), dest=f.name, action="append", **kw)
            dests.append(f.name)
            continue
        if kind is bool:
            kw.pop("metavar", None)
            group.add_argument(flag_name(f), dest=f.name, action=argparse.BooleanOptionalAction, **kw)
        else:
            group.add_argument(flag_name(f), dest=f.name, type=kind, choices=meta.get("choices"), **kw)
        dests.append(f.name)
    return dests


def parse_value(text: str) -> Any:
    """A YAML scalar: 8 -> int, 5e-4 / 0.1 -> float, true -> bool, null -> None, else str."""
    try:
        value = parse_yaml(text)
    except yaml.YAMLError:
        return text
    if value is not None and not isinstance(value, (int, float, bool, str)):
        return text  # lists and mappings are not option values here
    return value


def parse_opts(items: list[str], flag: str = "--opt", example: str = "init=pissa") -> dict[str, Any]:
    """["init=pissa", "lr_ratio=16"] -> {"init": "pissa", "lr_ratio": 16}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {item!r} is not KEY=VALUE; write e.g. {flag} {example}")
        out[key.strip().replace("-", "_")] = parse_value(value.strip())
    return out


def config_from_args(args: argparse.Namespace, config_cls: type = RunConfig):
    """The run config from ``--config`` (if any) overridden by the flags given."""
    names = {f.name for f in dataclasses.fields(config_cls)} - set(SPECIAL)
    given = {k: v for k, v in vars(args).items() if k in names}
    data = load_yaml(args.config) if getattr(args, "config", None) else {}
    flag_opts = parse_opts(getattr(args, "opt", None) or [])
    options = data.get("options")
    if isinstance(options, dict):
        options = dict(options)
        for key in ("r", "alpha"):  # --r / --alpha beat the file's options.r / options.alpha
            if key in given:
                options.pop(key, None)
        data["options"] = options
    for key in ("r", "alpha"):  # --opt r=... beats the file's r
        if key in flag_opts:
            data.pop(key, None)
    if flag_opts:
        data["options"] = {**(options if isinstance(options, dict) else {}), **flag_opts}
    flag_scenario = parse_opts(getattr(args, "scenario", None) or [], "--scenario", "method=fedavg")
    if flag_scenario:
        scenario = data.get("scenario")
        data["scenario"] = {**(scenario if isinstance(scenario, dict) else {}), **flag_scenario}
    data.update(given)
    return config_cls.from_dict(data)


def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer like 4, got {text!r}")
    return n


def ints(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 0,1,2, got {text!r}") from None


def names(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]
