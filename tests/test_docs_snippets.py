"""Every python and shell block of README.md and the guide (docs/, outside the study folders) runs
here, on tiny settings where its marker says so, or says why it does not (``docs/gen/docsource.py``);
every ``lorabench`` command line of every block, run or not, parses with the real parser."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "gen"))

import docsource

GLUE = ROOT.parent / "shared" / "data" / "glue"
BLOCKS = [b for page in docsource.guide_pages() for b in docsource.blocks(page) if b.kind]
PY_PAGES = sorted({b.page for b in BLOCKS if b.kind == "python" and b.marker is None})
SHELL_RUN = [b for b in BLOCKS if b.kind == "shell" and b.marker != "not run"]


def marker_problems(blocks: list[docsource.Block]) -> list[str]:
    """Blocks whose marker is incomplete: a skip without its reason, flags for a non-shell block."""
    problems = []
    for b in blocks:
        if b.marker == "not run" and not b.arg:
            problems.append(f"{b.id}: `<!-- not run: REASON -->` needs a reason")
        if b.marker == "run with" and (b.kind != "shell" or not b.arg or "\\\n" in b.code):
            problems.append(f"{b.id}: `<!-- run with: FLAGS -->` takes flags, on a shell block of one-line commands")
    return problems


def run_python(blocks: list[docsource.Block], folder: Path) -> dict:
    """Run the blocks in order, each as a script in ``folder`` that starts from the names the blocks
    before it left (a page is one session, as a reader runs it); a traceback names the page and line."""
    namespace: dict = {}
    for b in blocks:
        script = folder / f"{b.id.replace('/', '_').replace(':', '_line')}.py"
        script.write_text(b.code + "\n")
        namespace = runpy.run_path(str(script), init_globals=namespace, run_name="__docs__")
    return namespace


def shell_script(b: docsource.Block) -> str:
    """The block's script; with ``run with: FLAGS``, FLAGS go at the end of every lorabench command."""
    if b.marker != "run with":
        return b.code
    lines = []
    for line in b.code.splitlines():
        m = re.match(r"^(\s*lorabench\s.*?)(\s+#.*)?$", line)
        lines.append(m.group(1) + " " + b.arg + (m.group(2) or "") if m else line)
    return "\n".join(lines)


def run_shell(b: docsource.Block, folder: Path) -> subprocess.CompletedProcess:
    """Run a shell block with bash -e in ``folder``: ``lorabench`` and ``python`` are this interpreter's,
    ``configs/`` and ``docs/`` are the repository's, GLUE is the shared copy, nothing is downloaded."""
    bin_dir = folder / ".bin"
    bin_dir.mkdir(parents=True)
    for name, run in (("lorabench", f'"{sys.executable}" -m lorabench'), ("python", f'"{sys.executable}"')):
        (bin_dir / name).write_text(f'#!/usr/bin/env bash\nexec {run} "$@"\n')
        (bin_dir / name).chmod(0o755)
    for name in ("configs", "docs"):
        (folder / name).symlink_to(ROOT / name)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1",
           "LORABENCH_GLUE_DIR": str(GLUE), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(["bash", "-e", "-c", shell_script(b)], check=False, cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)


def parse_problems(blocks: list[docsource.Block]) -> list[str]:
    """Every lorabench command line the parser refuses, with its message."""
    from lorabench.commands import build_parser
    from lorabench.errors import UsageError

    problems = []
    for b in blocks:
        if b.kind != "shell":
            continue
        for argv in docsource.commands(b.code):
            try:
                build_parser().parse_args(argv)
            except UsageError as e:
                problems.append(f"{b.id}: lorabench {' '.join(argv)}: {e}")
    return problems


def test_every_block_runs_or_says_why():
    assert BLOCKS and PY_PAGES and SHELL_RUN
    assert marker_problems(BLOCKS) == []


@pytest.mark.parametrize("page", PY_PAGES)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_python([b for b in BLOCKS if b.page == page and b.kind == "python" and b.marker is None], tmp_path)


@pytest.mark.parametrize("block", SHELL_RUN, ids=lambda b: b.id)
def test_shell_blocks_run(block, tmp_path):
    done = run_shell(block, tmp_path)
    assert done.returncode == 0, f"{block.id} exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}"


def test_every_lorabench_line_parses():
    lines = [argv for b in BLOCKS if b.kind == "shell" for argv in docsource.commands(b.code)]
    assert len(lines) > 20
    assert parse_problems(BLOCKS) == []


def test_the_checks_fail_on_broken_snippets(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- not run: -->\n```bash\nlorabench variants\n```\n\n"
                    "```python\nimport lorabench\nlorabench.aply(None, 'lora')\n```\n\n"
                    "```bash\nls no-such-file\n```\n\n"
                    "<!-- not run: parsed only -->\n```bash\nlorabench train --no-such-flag 1\n```\n")
    empty_reason, python, shell, bad_flag = docsource.blocks(page, tmp_path)
    assert marker_problems([empty_reason, python, shell, bad_flag]) == [
        "page.md:2: `<!-- not run: REASON -->` needs a reason"]
    with pytest.raises(AttributeError, match="aply"):
        run_python([python], tmp_path)
    assert run_shell(shell, tmp_path / "run").returncode != 0
    assert [p.split(":")[1] for p in parse_problems([bad_flag])] == ["16"]
    assert "--no-such-flag" in parse_problems([bad_flag])[0]
