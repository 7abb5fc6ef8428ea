"""The generated parts of the guide say what the code says: the variants page lists every registered
variant with its paper, the settings tables read as ``lorabench train --help`` does (one
``setting(...)`` declaration for both), the result schema documents every key a result is written
with, and the command table lists every subcommand."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "gen"))

import docgen
import docgen_variants


def builtin_variants() -> list[str]:
    """The variants lorabench itself registers (another test may have registered a plugin in this process)."""
    from lorabench import adapters

    return [n for n in adapters.names() if adapters.get(n).__module__.startswith("lorabench.adapters.")]


def test_the_variants_page_lists_every_variant_with_its_paper():
    from lorabench import adapters

    page = docgen_variants.variants_page()
    names = builtin_variants()
    assert len(names) >= 30
    for name in names:
        cls = adapters.get(name)
        cited = re.findall(r"arXiv[: ]*(\d{4}\.\d{4,5})", cls.description)
        assert cited, f"variant {name}'s description names no arXiv id"
        row = next((line for line in page.splitlines() if line.startswith(f"| [`{name}`](#{name}) |")), None)
        assert row is not None and f"[{cited[0]}](https://arxiv.org/abs/{cited[0]})" in row, name
        section = page.split(f"\n### {name}\n", 1)[1].split("\n### ", 1)[0]
        assert f"[arXiv {cited[0]}](https://arxiv.org/abs/{cited[0]})" in section, name
        for option, default in docgen_variants_options(name).items():
            assert f"`{option}={default!r}`" in section, (name, option)


def docgen_variants_options(name: str) -> dict:
    from lorabench import adapters

    fields = dataclasses.fields(adapters.get(name).Options)
    return {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}


def test_peft_export_column_is_asked_of_the_variant():
    from lorabench import adapters

    assert docgen_variants.peft_export(adapters.get("lora")) is None
    assert "PEFT" in docgen_variants.peft_export(adapters.get("salt"))  # SALT refuses: full-rank update


def train_help() -> dict[str, str]:
    """flag -> its help in ``lorabench train --help``, as argparse expands it (one line)."""
    from lorabench.commands import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    train = sub.choices["train"]
    formatter = train._get_formatter()
    return {o: " ".join(formatter._expand_help(a).split()) for a in train._actions for o in a.option_strings}


def test_every_settings_row_reads_as_the_flag_help():
    from lorabench.config import RunConfig

    helps = train_help()
    rows = docgen.setting_rows("all")
    assert [r["key"] for r in rows] == [f.name for f in dataclasses.fields(RunConfig)]
    for row in rows:
        shown = f"{row['help']} [{row['default']}]" if row["default"] else row["help"]
        assert " ".join(shown.split()) == helps[row["flag"]], row["flag"]


def test_the_settings_page_has_every_group():
    from lorabench.config import RunConfig

    page = (ROOT / "docs" / "guide" / "settings.md").read_text()
    groups = {f.metadata["group"] for f in dataclasses.fields(RunConfig)}
    assert all(f"<!-- generated: settings {g} -->" in page for g in groups)
    table = docgen.settings_table("optimisation")
    lr = next(r for r in docgen.setting_rows("optimisation") if r["key"] == "lr")
    assert f"| `--lr` | `lr` | number | `{lr['default']}` | {lr['help']} | yes |" in table


def test_the_result_schema_documents_every_written_key():
    documented = {key for key, _, _ in docgen.schema_entries()}
    assert set(docgen.written_keys()) <= documented
    assert {"kind", "method", "metric", "details", "packed", "forgetting"} <= documented


def test_the_commands_table_lists_every_subcommand():
    from lorabench.commands import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    table = docgen.commands_table()
    assert all(f"| `lorabench {name}` |" in table for name in sub.choices)


def test_markers_that_name_nothing_stop_the_build():
    with pytest.raises(docgen.DocgenError, match="unknown generated part"):
        docgen.expand("<!-- generated: nothing -->")
    with pytest.raises(docgen.DocgenError, match="no heading"):
        docgen.expand("<!-- include: docs/quick/report.md ### No such section -->")
    with pytest.raises(docgen.DocgenError, match="no file"):
        docgen.expand("<!-- include: docs/quick/no-report.md -->")
    assert "| minilm | SST-2 | lora |" in docgen.expand("<!-- include: docs/quick/report.md ### Comparison -->")
