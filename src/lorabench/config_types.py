"""Settings' values as their declared types: what ``RunConfig`` fields and variant options accept.

``coerce`` turns a value read from YAML or the command line into a field's type ("5e-4" -> 5e-4,
8.0 -> 8 for an int; True is never a number) or raises a ConfigError naming the expected type;
``match_option_types`` makes alpha=16 and alpha=16.0 one run id.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from . import units
from .errors import ConfigError


def coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` as the field's type, or a ConfigError naming the expected type."""
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    args = typing.get_args(hint) if is_union else (hint,)
    kinds = [a for a in args if a is not type(None)]
    if value is None:
        if len(kinds) == len(args):
            raise ConfigError(f"{name} must not be null; give a {_type_name(kinds[0])}")
        return None
    for kind in kinds:
        converted = _as(value, kind)
        if converted is not _FAIL:
            return converted
    wanted = " or ".join(_type_name(k) for k in kinds)
    raise ConfigError(f"{name} must be {wanted}, got {value!r} ({type(value).__name__})")


_FAIL = object()


def _as(value: Any, kind: Any) -> Any:
    origin = typing.get_origin(kind) or kind
    if origin is bool:
        return value if isinstance(value, bool) else _FAIL
    if isinstance(value, bool):
        return _FAIL  # True is an int in Python, never a number here
    value = units.parse_number(value)
    if origin is int:
        if isinstance(value, int):
            return value
        return int(value) if isinstance(value, float) and value.is_integer() else _FAIL
    if origin is float:
        return float(value) if isinstance(value, (int, float)) else _FAIL
    if origin is str:
        return value if isinstance(value, str) else (str(value) if isinstance(value, (int, float)) else _FAIL)
    if origin is dict:
        return dict(value) if isinstance(value, dict) and all(isinstance(k, str) for k in value) else _FAIL
    if origin is list:
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        return list(value) if ok else _FAIL
    return _FAIL


def _type_name(kind: Any) -> str:
    origin = typing.get_origin(kind) or kind
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            dict: "a mapping", list: "a list of strings"}.get(origin, str(kind))


def match_option_types(options_cls: type, opts: dict[str, Any]) -> dict[str, Any]:
    """int -> float for float options (alpha=16 and 16.0 are one run id); 8.0 -> 8 for ints."""
    try:
        hints = typing.get_type_hints(options_cls)
    except Exception:  # an annotation we cannot resolve: leave the values as they are
        return opts
    out = dict(opts)
    for key, value in opts.items():
        hint = hints.get(key)
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            out[key] = float(value)
        elif hint is int and isinstance(value, float) and value.is_integer():
            out[key] = int(value)
    return out
