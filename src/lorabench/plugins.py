"""Variants defined outside lorabench: a user's file or module, or an installed package.

    lorabench train --plugin my_method.py --variant my_lora          # a file, anywhere
    lorabench train --plugin mypkg.variants --variant my_lora        # a module on the path
    # an installed package: [project.entry-points."lorabench.variants"] my_lora = "mypkg.variants"

A plugin registers its variants as the built-ins do (``@register("my_lora")`` on a ``Variant``
subclass). ``RunConfig.plugins`` names them, so every process that builds the run's config (a
sweep's run processes, a pack, a Ray task, each DDP rank) loads them before it looks the variant
up: nothing depends on the process that started the sweep. Installed entry points
(``lorabench.variants``) are loaded once per process. A plugin that registers a name that is
already taken (a built-in or another plugin's) is refused, and every result records which code
made it: the plugin's module, file and the file's sha256.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from typing import Any

from .adapters import registry
from .errors import ConfigError

ENTRY_POINT_GROUP = "lorabench.variants"
#: spec (resolved path or module name) -> its record: {"plugin", "module", "file", "sha256", "variants"}
LOADED: dict[str, dict[str, Any]] = {}
_ENTRY_POINTS_LOADED = False


def _sha256(path: str | None) -> str | None:
    if path is None or not Path(path).is_file():
        return None
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def is_file_spec(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def normalize(spec: str) -> str:
    """A file plugin as an absolute path (a run process may start elsewhere); a module name as given."""
    spec = str(spec).strip()
    if not spec:
        raise ConfigError("--plugin is empty; pass a .py file or a module name (mypkg.variants)")
    return str(Path(spec).expanduser().resolve()) if is_file_spec(spec) else spec


def load(spec: str) -> dict[str, Any]:
    """Import the plugin ``spec`` (once per process) and return its record."""
    spec = normalize(spec)
    if spec in LOADED:
        return LOADED[spec]
    before = set(registry.names())
    try:
        module = _import_file(spec) if is_file_spec(spec) else importlib.import_module(spec)
    except ValueError as e:  # the registry refuses a name registered twice
        raise ConfigError(f"plugin {spec}: {e}; rename the plugin's variant (built-in names: see `lorabench "
                          "variants`)") from None
    except ImportError as e:
        raise ConfigError(f"plugin {spec} cannot be imported ({e}); pass an existing .py file or a module on the "
                          "Python path") from None
    added = sorted(set(registry.names()) - before)
    file = getattr(module, "__file__", None)
    LOADED[spec] = {"plugin": spec, "module": module.__name__, "file": file, "sha256": _sha256(file),
                    "variants": added}
    return LOADED[spec]


def _import_file(path: str):
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--plugin {path} is not a file; pass the .py file that defines your variant")
    digest = hashlib.sha256(str(p).encode()).hexdigest()[:8]
    name = f"lorabench_plugin_{p.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, p)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--plugin {path} is not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_entry_points() -> list[dict[str, Any]]:
    """Load every installed ``lorabench.variants`` entry point, once per process."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return [r for r in LOADED.values() if r.get("entry_point")]
    _ENTRY_POINTS_LOADED = True
    records = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        module = ep.value.split(":")[0]
        record = load(module)
        record["entry_point"] = ep.name
        records.append(record)
    return records


def load_all(specs: list[str] | str | None) -> list[str] | None:
    """Load ``specs`` (normalized: files as absolute paths) and the installed entry points."""
    if isinstance(specs, str):
        specs = [specs]
    if specs is not None:
        specs = [normalize(s) for s in specs]
        for spec in specs:
            load(spec)
    load_entry_points()
    return specs


def records(specs: list[str] | None) -> list[dict[str, Any]]:
    """What a result records of the plugins its run loaded (the given ones and installed entry points)."""
    given = [load(s) for s in specs or []]
    seen = {r["plugin"] for r in given}
    return given + [r for r in LOADED.values() if r.get("entry_point") and r["plugin"] not in seen]
