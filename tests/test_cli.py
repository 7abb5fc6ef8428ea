"""The ``lorabench`` command line: subcommands, flag parsing, exit codes and error lines."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

import lorabench
from lorabench import adapters
from lorabench import commands as cli
from lorabench.commands.args import config_from_args
from lorabench.commands import main
from lorabench.commands.args import parse_opts, parse_value
from lorabench.config import ConfigError

GLUE = Path(__file__).resolve().parents[2] / "shared/data/glue"
needs_glue = pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"GLUE data not found at {GLUE}")


def run_main(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ---- lorabench variants --------------------------------------------------------------------
def test_variants_lists_every_variant_with_description_and_options(capsys):
    rc, out, _ = run_main(capsys, "variants")
    assert rc == 0
    structures, inits, rules = out.split("\n\n")  # the three axes, one section each
    blocks = {}
    for line in structures.splitlines()[1:]:
        if line and not line.startswith(" "):
            name = line.strip()
            blocks[name] = []
        else:
            blocks[name].append(line.strip())
    assert sorted(blocks) == lorabench.variants()
    for name, lines in blocks.items():
        cls = adapters.get(name)
        assert lines[0] == cls.description and "arXiv" in lines[0], (name, lines[0])  # names the paper
        options = lines[1]
        assert options.startswith("options: ")
        for f in dataclasses.fields(cls.Options):
            default = f.default if f.default is not dataclasses.MISSING else None
            assert f"{f.name}={default!r}" in options, (name, f.name, options)
        assert lines[2] == ("packs: yes (sweep --pack K trains such runs over one shared base)"
                            if cls.unpackable() is None else f"packs: no: {cls.unpackable()}"), (name, lines[2])
    assert "r=8" in "\n".join(blocks["lora"]) and "init='kaiming'" in "\n".join(blocks["lora"])
    from lorabench.adapters.lora import INITS
    from lorabench.adapters.rules import RULES

    assert inits.startswith("initialisations") and rules.startswith("optimisation rules")
    assert sorted(line.split()[0] for line in inits.splitlines()[1:]) == sorted(INITS)
    assert sorted(line.split()[0] for line in rules.strip().splitlines()[1:]) == sorted(RULES)


# ---- --opt and flag parsing ------------------------------------------------------------------
def test_parse_value_reads_yaml_scalars():
    assert parse_value("8") == 8 and isinstance(parse_value("8"), int)
    assert parse_value("0.5") == 0.5
    assert parse_value("5e-4") == 5e-4 and isinstance(parse_value("5e-4"), float)
    assert parse_value("1E3") == 1000.0
    assert parse_value("true") is True and parse_value("False") is False
    assert parse_value("null") is None
    assert parse_value("pissa") == "pissa"
    assert parse_value("[1, 2") == "[1, 2"  # not YAML: kept as text


def test_parse_opts():
    assert parse_opts(["init=pissa", "lr_ratio=16", "rslora=true", "dropout=0.1"]) == {
        "init": "pissa", "lr_ratio": 16, "rslora": True, "dropout": 0.1}
    assert parse_opts(["lr-ratio=4"]) == {"lr_ratio": 4}
    with pytest.raises(ConfigError, match="is not KEY=VALUE"):
        parse_opts(["init"])


def config_of(*argv):
    args = cli.build_parser().parse_args(["train", *argv])
    return config_from_args(args)


def test_flags_and_opts_build_the_run_config(tmp_path):
    cfg = config_of("--variant", "lora_plus", "--opt", "lr_ratio=4", "--opt", "init=gaussian", "--r", "4",
                    "--lr", "1e-3", "--targets", "query,value", "--grad-checkpointing", "--memory-budget", "2GiB")
    assert cfg.variant == "lora_plus" and cfg.lr == 1e-3 and cfg.grad_checkpointing is True
    assert cfg.targets == ["query", "value"] and cfg.budget_bytes() == 2 * 2**30
    opts = cfg.resolved()["options"]
    assert opts["lr_ratio"] == 4.0 and opts["init"] == "gaussian" and opts["r"] == 4
    assert config_of() == lorabench.config.RunConfig()  # no flags: the defaults


def test_flags_override_the_yaml_config(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("task: rte\nlr: 1e-3\nepochs: 2\noptions: {r: 16, alpha: 32}\nquiet: true\n")
    cfg = config_of("--config", str(path), "--lr", "2e-4", "--r", "4", "--opt", "dropout=0.1", "--no-quiet")
    assert cfg.task == "rte" and cfg.epochs == 2.0  # from the file
    assert cfg.lr == 2e-4 and cfg.quiet is False  # flags win
    opts = cfg.resolved()["options"]
    assert opts["r"] == 4 and opts["alpha"] == 32.0 and opts["dropout"] == 0.1
    path.write_text("r: 16\n")
    assert config_of("--config", str(path), "--opt", "r=2").resolved()["options"]["r"] == 2


# ---- errors: one line, exit 2, no traceback ---------------------------------------------------
def test_unknown_task_exits_2(capsys, tmp_path):
    rc, _, err = run_main(capsys, "train", "--task", "imdb", "--out", str(tmp_path))
    assert rc == 2
    assert_one_line_error(err, "unknown GLUE task 'imdb'", "SST-2")
    assert not list(tmp_path.iterdir())  # nothing ran, nothing written


def test_unknown_model_alias_exits_2(capsys, tmp_path):
    rc, _, err = run_main(capsys, "train", "--model", "no-such-model", "--out", str(tmp_path))
    assert rc == 2
    assert_one_line_error(err, "no-such-model", "minilm")
    assert not list(tmp_path.iterdir())


@needs_glue
def test_memory_budget_too_small_for_batch_one_exits_2(capsys, tmp_path):
    rc, _, err = run_main(capsys, "train", "--model", "minilm", "--layers", "2", "--memory-budget", "1MiB",
                          "--data-dir", str(GLUE), "--train-limit", "16", "--out", str(tmp_path))
    assert rc == 2
    assert_one_line_error(err, "memory budget 1.0 MiB is too small for batch size 1 with model minilm",
                          "--memory-budget")
    assert not list(tmp_path.iterdir())


def test_bad_flags_exit_2_with_one_line(capsys):
    rc, _, err = run_main(capsys, "train", "--lr", "fast")
    assert rc == 2
    assert_one_line_error(err, "--lr", "invalid float value")
    rc, _, err = run_main(capsys, "train", "--no-such-flag")
    assert rc == 2
    assert_one_line_error(err, "unrecognized arguments: --no-such-flag")
    rc, _, err = run_main(capsys, "train", "--lr", "0")
    assert rc == 2
    assert_one_line_error(err, "lr must be > 0")
    rc, _, err = run_main(capsys, "train", "--opt", "lr_ratio=4")  # lora has no lr_ratio
    assert rc == 2
    assert_one_line_error(err, "no option 'lr_ratio'", "options are: r, alpha")
    rc, _, err = run_main(capsys, "frobnicate")
    assert rc == 2
    assert_one_line_error(err, "invalid choice: 'frobnicate'")


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(ConfigError, match="unknown GLUE task"):
        main(["train", "--task", "imdb", "--debug"])


def test_failed_run_exits_1(capsys, monkeypatch, tmp_path):
    from lorabench import run

    def crash(cfg, progress=True):
        raise run.RunFailed("run abc error: RuntimeError: boom (result: x.json)", {}, tmp_path / "x.json")

    monkeypatch.setattr(run, "execute", crash)
    rc, _, err = run_main(capsys, "train")
    assert rc == 1
    assert_one_line_error(err, "boom", "x.json")


def test_python_dash_m_lorabench_exit_code_and_one_error_line():
    bad = subprocess.run([sys.executable, "-m", "lorabench", "train", "--task", "imdb"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert_one_line_error(bad.stderr, "unknown GLUE task 'imdb'")
