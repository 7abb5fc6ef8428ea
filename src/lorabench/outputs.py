"""One rule for everything a command writes, checked before any compute:

- ``safe_name``: every name that becomes a path component (a task, a sweep name, a tracker group,
  a method, a run id read from a file) is one plain component: letters, digits, ``.``, ``_``, ``-``
  and ``+``, not ``.`` or ``..``. A name that would leave the output folder is refused, never
  rewritten, so two runs can never be silently merged into one folder.
- ``check_output_folder``: the folder can be created and written (a read-only folder is a bad
  input, exit 2, before training, never an error after it).
- ``refuse_overwriting_inputs``: nothing a user passed as input is ever written: an output path
  that is one of the input files, or a JSON file directly in an input folder (where the command
  reads its results), is refused; a table written beside the results (``DIR/table.md``) is fine.
- ``check_output_file``: a file output (``--json FILE``, ``--out FILE.md``): its folder is writable
  and it is not an input.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from .errors import ConfigError

_COMPONENT = re.compile(r"[A-Za-z0-9._+\-]+")


def safe_name(value: object, what: str) -> str:
    """``value`` as one path component, or a ConfigError naming ``what`` and the fix."""
    text = str(value)
    if not _COMPONENT.fullmatch(text) or text in (".", ".."):
        raise ConfigError(f"{what} {text!r} cannot be a file or folder name (it would leave the output folder or "
                          "is empty); use letters, digits, '.', '_', '-' and '+' only, e.g. my-sweep")
    return text


class UnwritableOutput(ConfigError):
    """An output folder or file that cannot be written: a bad input (exit 2), found before compute."""


def check_output_folder(folder: str | os.PathLike, flag: str = "--out") -> Path:
    """Make sure a file can be written in ``folder``; folders created for the check are removed
    again, so a command refused later for another bad input leaves nothing behind."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UnwritableOutput(f"{flag} {folder} is a file, not a folder; pass a folder, e.g. {flag} runs")
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".lorabench-write-check.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UnwritableOutput(f"cannot write in {folder} ({e.strerror or e}); make the folder writable, free disk "
                               f"space, or pass another {flag}") from None
    finally:
        for p in created:  # deepest first
            try:
                p.rmdir()
            except OSError:
                pass
    return folder


def refuse_overwriting_inputs(out: str | os.PathLike, inputs: list, flag: str = "--out") -> None:
    """ConfigError when ``out`` is one of ``inputs``, or a JSON file directly in an input folder."""
    target = Path(out).resolve()
    for given in inputs:
        p = Path(given).resolve()
        if target == p or (p.is_dir() and target.parent == p and target.suffix == ".json"):
            raise ConfigError(f"{flag} {out} would write over the input {given}; inputs are never written: pass "
                              f"another {flag}")


def check_output_file(path: str | os.PathLike, inputs: list = (), flag: str = "--out") -> Path:
    """A file output: not an input, not a folder, and its folder writable (all before compute)."""
    path = Path(path)
    refuse_overwriting_inputs(path, list(inputs), flag)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; pass a file name, e.g. {flag} {path / 'out.json'}")
    check_output_folder(path.parent, flag)
    return path
