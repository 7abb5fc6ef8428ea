"""Where mixture results live: one file per run, named by what made it.

    DIR/mixture-<run_id>.json   one run's record (``commands.mixture``); the run id hashes every
                                setting that changes the result, the data and the frozen experts
    DIR/mixture.md              the tables of every mixture result in DIR, rebuilt after each run
    DIR/mixture.json            the one record of an earlier version (still read, never written)

A run writes its own file only, atomically (``results.write_json_atomic``): a rerun of the same
config replaces its own record, a run of another config adds a file beside it, and a run killed
mid-write leaves at most a hidden ``.mixture-*.tmp`` that nothing here reads. So a folder holds
exactly one record per run id, and no finished result is ever lost to another run.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from .. import results
from ..errors import ConfigError
from ..outputs import safe_name

SCHEMA, SCHEMA_VERSION = "lorabench-mixture", 1
LEGACY = "mixture.json"
TABLES = "mixture.md"
PATTERN = "mixture-*.json"


def result_path(folder: str | Path, run_id: str) -> Path:
    return Path(folder) / f"mixture-{safe_name(run_id, 'run id')}.json"


def result_files(folder: str | Path, recursive: bool = False) -> list[Path]:
    """The mixture result files in ``folder`` (and its subfolders when ``recursive``), the old
    ``mixture.json`` included; temporary files of an unfinished write are never among them."""
    folder = Path(folder)
    glob = folder.rglob if recursive else folder.glob
    found = [*glob(LEGACY), *glob(PATTERN)]
    return sorted({p for p in found if p.is_file() and not p.name.startswith(".")})


def read_record(path: str | Path) -> dict:
    """One mixture record, or a ConfigError naming the file and the fix."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path} ({e}); pass mixture results (folders or mixture-*.json files) "
                          "written by lorabench mixture") from None
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise ConfigError(f"{path} is not a {SCHEMA} result; pass mixture results (folders or mixture-*.json files) "
                          "written by lorabench mixture")
    return record


def read_records(paths: list[str]) -> list[dict]:
    """The records of ``paths``, in order: files, or folders (every mixture result in the folder and
    its subfolders, oldest first). A file named twice is read once."""
    out, seen = [], set()
    for given in paths:
        p = Path(given)
        files = result_files(p, recursive=True) if p.is_dir() else [p]
        if not files:
            raise ConfigError(f"{p} holds no mixture result ({PATTERN} or {LEGACY}); pass folders or files "
                              "written by lorabench mixture")
        batch = []
        for f in files:
            if f.resolve() not in seen:
                seen.add(f.resolve())
                batch.append(read_record(f))
        out += sorted(batch, key=_order) if p.is_dir() else batch
    return out


def folder_records(folder: str | Path) -> list[dict]:
    """Every mixture record directly in ``folder``, oldest first; a file that cannot be read is
    skipped with a warning (a run's own result is written already: its table must not fail)."""
    out = []
    for f in result_files(folder):
        try:
            out.append(read_record(f))
        except ConfigError as e:
            warnings.warn(f"skipping {f}: {e}")
    return sorted(out, key=_order)


def write_result(folder: str | Path, record: dict) -> Path:
    """``record`` as ``folder/mixture-<run_id>.json``, atomically (a rerun replaces its own file only)."""
    return results.write_json_atomic(result_path(folder, record["run_id"]), record)


def write_text(path: str | Path, text: str) -> Path:
    """``text`` to ``path`` through a temporary file and a rename: never a partial file."""
    path = Path(path)
    results.atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text))
    return path


def _order(record: dict) -> tuple[str, str]:
    return str(record.get("created_at", "")), str(record.get("run_id", ""))
