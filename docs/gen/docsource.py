"""The documentation's own source, as the tests read it: which pages are the guide (README.md and
the pages under docs/ outside the study folders), their code blocks with the marker before each,
their inline code spans, and the ``lorabench`` command lines inside a shell block.

A python, bash or console block is run by the tests unless the line before it says why not:

    <!-- not run: REASON -->              skipped; the reason must not be empty
    <!-- run with: FLAGS -->              (shell) run, FLAGS appended to every lorabench command:
                                          the same command on tiny settings
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Folders under docs/ that hold no guide pages: generated study outputs and this code.
#: docs/ folders that are not guide pages: the generators, and the study folders (each holds its committed
#: runs/, whose READMEs show the commands that made them: run by nobody's test, they would rewrite them).
NOT_GUIDE = ("gen", "zoo")  # zoo: a study folder without a runs/ folder


def not_guide(root: Path = ROOT) -> set[str]:
    return set(NOT_GUIDE) | {d.name for d in (root / "docs").iterdir() if (d / "runs").is_dir()}
RUN_LANGS = {"python": "python", "py": "python", "bash": "shell", "console": "shell", "sh": "shell",
             "shell": "shell"}
MARK = re.compile(r"^<!-- (not run|run with):(.*?)-->$")
FENCE = re.compile(r"^(\s*)(```+)\s*([\w+-]*)\s*$")


@dataclass
class Block:
    page: str  # path relative to the repository
    line: int  # line of the opening fence (1-based)
    lang: str  # the fence's language
    code: str
    marker: str | None  # "not run", "run with" or None
    arg: str  # the marker's reason or flags

    @property
    def kind(self) -> str | None:
        """"python", "shell", or None for a block the tests do not run (yaml, text ...)."""
        return RUN_LANGS.get(self.lang)

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def guide_pages(root: Path = ROOT) -> list[Path]:
    """README.md and every Markdown page of docs/ outside the study folders."""
    pages = [root / "README.md"]
    skip = not_guide(root)
    for page in sorted((root / "docs").rglob("*.md")):
        if page.relative_to(root / "docs").parts[0] not in skip:
            pages.append(page)
    return pages


def blocks(page: Path, root: Path = ROOT) -> list[Block]:
    """The fenced code blocks of ``page``, each with the marker on the nearest non-blank line before it."""
    lines = page.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == m.group(2)), len(lines))
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        mark = MARK.match(before)
        out.append(Block(str(page.relative_to(root)), i + 1, m.group(3).lower(), "\n".join(lines[i + 1:end]),
                         mark.group(1) if mark else None, mark.group(2).strip() if mark else ""))
        i = end + 1
    return out


def prose(page: Path) -> str:
    """``page`` without its fenced code blocks and HTML comments (where inline code spans live)."""
    text, keep, fence = page.read_text(), [], None
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(2)
        elif fence is not None and line.strip() == fence:
            fence = None
        elif fence is None:
            keep.append(line)
    return re.sub(r"<!--.*?-->", "", "\n".join(keep), flags=re.DOTALL)


def code_spans(page: Path) -> list[str]:
    """Every inline code span of ``page`` (single or double backticks), outside code blocks."""
    return [m.group(2).strip() for m in re.finditer(r"(`+)(.+?)\1", prose(page), flags=re.DOTALL)]


def commands(code: str) -> list[list[str]]:
    """The argument lists of every ``lorabench`` command in a shell block: continuation lines joined,
    heredoc bodies skipped, comments dropped, commands split at ``&&``, ``;`` and ``|``; ``python -m
    lorabench`` and ``accelerate launch ... -m lorabench`` count as ``lorabench``."""
    text = re.sub(r"\\\n\s*", " ", code)
    out, heredoc = [], None
    for line in text.splitlines():
        if heredoc is not None:
            heredoc = None if line.strip() == heredoc else heredoc
            continue
        if (m := re.search(r"<<-?\s*'?(\w+)'?", line)):
            heredoc = m.group(1)
        for part in re.split(r"&&|;|\|", line):
            words = shlex.split(part, comments=True)
            if "lorabench" in words[:1]:
                out.append(words[1:])
            elif "-m" in words and words.index("-m") + 1 < len(words) and words[words.index("-m") + 1] == "lorabench":
                out.append(words[words.index("-m") + 2:])
    return out
