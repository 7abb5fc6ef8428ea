"""Builders of bad task files for the bad-input table (tests/test_bad_input.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

MINILM = ("--model", "minilm", "--layers", "2")
GOOD_DEV = '{"text": "fine", "label": 0}\n{"text": "dull", "label": 1}\n'


def task_file(root: Path, train: str, dev: str | None = GOOD_DEV, task: str = "text: text\nlabel: label\nlabels: [0, 1]\n",
              suffix: str = "jsonl") -> Path:
    """A task file over a train file (and a dev file) in ``root/mytask``; ``task``: its column mapping."""
    folder = root / "mytask"
    folder.mkdir()
    (folder / f"train.{suffix}").write_text(train)
    files = f"files: {{train: train.{suffix}" + (f", validation: dev.{suffix}}}" if dev is not None else "}")
    if dev is not None:
        (folder / f"dev.{suffix}").write_text(dev)
    (folder / "task.yaml").write_text(f"name: mytask\n{files}\n{task}")
    return folder / "task.yaml"


def jsonl(*rows: tuple) -> str:
    return "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows)


def on_task(make: Callable[[Path], Path], *extra: str) -> Callable[..., list[str]]:
    """``lorabench train --task <the file make(tmp) wrote>`` on a 2-layer MiniLM."""
    return lambda tmp, out, fx: ["train", "--task", str(make(tmp)), *MINILM, *extra, "--out", str(out)]
