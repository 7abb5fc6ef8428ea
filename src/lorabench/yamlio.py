"""YAML as lorabench reads it: safe loading only, with ``5e-4`` read as a float (YAML 1.1 reads
it as a string), and run-config files read into a mapping with errors that name the fix."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


class YAMLLoader(yaml.SafeLoader):
    """YAML 1.1 reads ``5e-4`` (no dot) as a string; run and sweep files are full of such learning
    rates, so this loader reads them as floats."""


YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    """YAML text as Python values, with ``5e-4`` a float (raises ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=YAMLLoader)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a run config file (a YAML mapping of RunConfig fields)."""
    path = Path(path)
    try:
        data = parse_yaml(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path} ({e})") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{line}; fix its syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings (key: value), not a {type(data).__name__}")
    return data
