"""The layers of ``src/lorabench``, checked from its source: no import circles, no module
importing another module's underscore names, at most ``MAX_FLOORS`` floors (a module stands one
floor above everything it imports, lazy imports inside functions included), no source file over
``MAX_LINES`` lines, and a new ``RunConfig`` field is a flag of ``train`` and of ``sweep`` with
no edit in the command-line or sweep code."""

from __future__ import annotations

import ast
import dataclasses
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "lorabench"
#: 13: scenario kinds are runs (the config validates each kind's settings, so it sits above the
#: scenario settings and their method registries; ``run.execute`` dispatches to every kind's recipe,
#: so run sits above the recipes, which sit above ``train``), and any labelled data is a task
#: (``data.glue`` reads task files through ``data.taskfile`` and its ``readers``). Each step up is
#: one real dependency; the limit stops new ones from creeping in unnoticed.
MAX_FLOORS = 13
MAX_LINES = 400


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Import nodes under ``if TYPE_CHECKING:`` (annotations only: no import at run time)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    return skip


@functools.cache
def import_graph() -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """module -> the lorabench modules it imports (anywhere in the file), and every
    ``(module, imported module, name)`` that imports an underscore name."""
    modules = {_module_name(p)[0]: p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for name, path in modules.items():
        _, is_package = _module_name(path)
        here = name if is_package else name.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        skip = _type_checking_only(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != "lorabench":
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in modules:  # `from . import inject`: the module itself
                        graph[name].add(sub)
                        continue
                    graph[name].add(target)
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append((name, target, alias.name))
        graph[name].discard(name)
    return graph, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def floors(graph: dict[str, set[str]]) -> dict[str, int]:
    """1 for a module that imports nothing of lorabench, else one above the highest it imports."""
    out: dict[str, int] = {}

    def floor(m: str) -> int:
        if m not in out:
            out[m] = 1 + max((floor(d) for d in graph[m]), default=0)
        return out[m]

    for m in graph:
        floor(m)
    return out


def test_no_import_circles():
    graph, _ = import_graph()
    assert cycles(graph) == []


def test_no_module_imports_another_modules_underscore_names():
    _, private = import_graph()
    assert private == [], "import the public name (or make it public where it is defined)"


def test_at_most_nine_floors():
    graph, _ = import_graph()
    assert not cycles(graph)
    f = floors(graph)
    top = max(f.values())
    assert top <= MAX_FLOORS, sorted(((n, m) for m, n in f.items()), reverse=True)[:8]


def test_leaf_modules_import_nothing_above_them():
    graph, _ = import_graph()
    for leaf in ("lorabench._version", "lorabench.errors", "lorabench.units", "lorabench.choices"):
        assert graph[leaf] == set(), leaf
    assert graph["lorabench.targets"] == {"lorabench.errors"}
    # the variants never reach up into the model-level layers
    above = {"lorabench.inject", "lorabench.checkpoint", "lorabench.config", "lorabench.run", "lorabench.train"}
    for module, imports in graph.items():
        if module.startswith("lorabench.adapters"):
            assert not imports & above, (module, imports & above)


def test_the_checker_finds_a_circle_and_counts_floors():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert floors({"a": set(), "b": {"a"}, "c": {"a", "b"}}) == {"a": 1, "b": 2, "c": 3}


def test_no_source_file_over_400_lines():
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    long = {str(p.relative_to(ROOT)): n for p in files
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


# ---- one source for every flag -----------------------------------------------------------------
def _config_with_a_new_field():
    from lorabench.config import RunConfig, setting

    return dataclasses.make_dataclass(
        "RunConfigPlus", [("label_smoothing", float, setting(0.0, "a field added by the test", group="optimisation"))],
        bases=(RunConfig,))


def test_a_new_config_field_is_a_train_flag_with_its_help():
    from lorabench.commands import train
    from lorabench.commands.args import Parser, config_from_args

    plus = _config_with_a_new_field()
    parser = Parser(prog="lorabench")
    sub = parser.add_subparsers(dest="command")
    train.add_parser(sub, config_cls=plus)
    args = parser.parse_args(["train", "--label-smoothing", "0.1", "--lr", "1e-3", "--r", "4"])
    cfg = config_from_args(args, config_cls=plus)
    assert cfg.label_smoothing == 0.1 and cfg.lr == 1e-3 and cfg.variant_options()["r"] == 4
    help_text = sub.choices["train"].format_help()
    assert "--label-smoothing" in help_text and "a field added by the test" in help_text


def test_a_new_config_field_is_a_sweep_override(tmp_path):
    from lorabench.commands import sweep as sweep_cmd
    from lorabench.commands.args import Parser

    plus = _config_with_a_new_field()
    file = tmp_path / "s.yaml"
    file.write_text("base: {train_limit: 8}\nvariants:\n  lora: {lr: [1.0e-3, 2.0e-3]}\n")
    parser = Parser(prog="lorabench")
    sub = parser.add_subparsers(dest="command")
    sweep_cmd.add_sweep_parser(sub, config_cls=plus)
    args = parser.parse_args(["sweep", str(file), "--label-smoothing", "0.2", "--max-length", "16"])
    planned = sweep_cmd.sweep_from_args(args, args.config, config_cls=plus)
    assert len(planned.runs) == 2
    assert all(r.config.label_smoothing == 0.2 and r.config.max_length == 16 for r in planned.runs)


def test_every_train_flag_comes_from_a_config_field():
    from lorabench.commands import build_parser
    from lorabench.config import RunConfig

    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]  # argparse keeps no public handle
    flags = {o for a in train._actions for o in a.option_strings if o.startswith("--")}
    expected = {"--" + (f.metadata.get("flag") or f.name).replace("_", "-") for f in dataclasses.fields(RunConfig)}
    booleans = {"--no-" + f[2:] for f in expected}
    assert flags - booleans == expected | {"--config", "--help"}
    for f in dataclasses.fields(RunConfig):
        assert f.metadata.get("help"), f"RunConfig.{f.name} has no help text"


@pytest.mark.parametrize("field", ["train_limit", "eval_limit"])
def test_help_texts_say_what_the_code_does(field):
    from lorabench.config import RunConfig

    help_text = {f.name: f.metadata["help"] for f in dataclasses.fields(RunConfig)}[field]
    assert "random subset" in help_text  # batching.subset samples at random (seeded), not the first N


def test_variant_options_are_validated_once_per_config(monkeypatch):
    from lorabench.adapters.lora import LoRA
    from lorabench.config import RunConfig

    calls = []
    original = LoRA.make_options.__func__
    monkeypatch.setattr(LoRA, "make_options", classmethod(lambda cls, **o: calls.append(o) or original(cls, **o)))
    cfg = RunConfig(variant="lora", r=4)
    cfg.resolved(), cfg.run_id(), cfg.variant_options()
    assert len(calls) == 1
    cfg.options = {"dropout": 0.1}  # a changed config is validated again
    assert cfg.variant_options()["dropout"] == 0.1 and len(calls) == 2
