"""``lorabench mixture`` against the mistakes a user probe found: results keyed by the run that made
them (one file per run id, a rerun replaces its own file only, the tables rebuilt from every result
in the folder), the same adapter routed twice, non-finite or out-of-range numbers, adapters of
another architecture, settings of the wrong type, an --out that cannot be written, and a table
written over its input. Every refusal exits 2 with one ``error: ...`` line before any compute and
writes nothing (``tests/test_bad_input.py``'s rule)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lorabench import commands as cli

from helpers_cli import refused as refused_cli

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
needs_glue = pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"GLUE data not found at {GLUE}")
TINY = ["--tasks", "sst2", "--layers", "2", "--train-limit", "16", "--eval-limit", "16", "--max-length", "16",
        "--batch-size", "16", "--data-dir", str(GLUE), "--quiet"]


def files_under(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def refused(argv: list[str], capsys, root: Path, *fragments: str) -> str:
    """Run ``lorabench mixture ARGV``: exit 2, one error line holding ``fragments``, nothing written under ``root``."""
    before = files_under(root)
    line = refused_cli(["mixture", *argv], capsys, *fragments)
    assert files_under(root) == before  # refused before compute: nothing written anywhere
    return line


@pytest.fixture
def no_compute(monkeypatch):
    """A refusal must come before any model or data loads."""
    from lorabench.commands import mixture

    def fail(*a, **k):
        raise AssertionError("built a model for a bad input")

    monkeypatch.setattr(mixture, "build", fail)


def save_lora(folder: Path, layers: int, seed: int) -> Path:
    """A LoRA adapter of a ``layers``-layer MiniLM (its A drawn from ``seed``: adapters of two seeds differ)."""
    import lorabench
    from lorabench.models import load_model

    model, _ = load_model("minilm", "sst2", layers=layers)
    torch.manual_seed(seed)
    lorabench.apply(model, "lora", r=4)
    return lorabench.save_adapter(model, folder)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("adapters")
    return [save_lora(root / f"a{seed}", layers=2, seed=seed) for seed in (1, 2)]


def mixture_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("mixture-*.json"))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> Path:
    """One folder, two runs: method lora, then lora_mixer."""
    out = tmp_path_factory.mktemp("runs") / "mix"
    for method in (["--method", "lora"], ["--method", "lora_mixer", "--experts", "2", "--k", "1"]):
        assert cli.main(["mixture", *TINY, *method, "--out", str(out)]) == 0
    return out


# ---- 1. results keyed by what made them -------------------------------------------------------------


@needs_glue
def test_runs_of_two_methods_into_one_folder_keep_both_results(two_runs):
    files = mixture_files(two_runs)
    records = [json.loads(f.read_text()) for f in files]
    assert sorted(r["method"] for r in records) == ["lora", "lora_mixer"]
    assert all(f.name == f"mixture-{r['run_id']}.json" for f, r in zip(files, records))
    assert not (two_runs / "mixture.json").exists()
    md = (two_runs / "mixture.md").read_text()  # the tables of every result in the folder
    assert "single-task LoRA (r=8)" in md and "lora_mixer (E=2, k=1, r=8)" in md


@needs_glue
def test_a_rerun_after_kill_9_replaces_its_own_result_only(two_runs, tmp_path):
    out = tmp_path / "mix"
    shutil.copytree(two_runs, out)
    by_method = {json.loads(f.read_text())["method"]: f for f in mixture_files(out)}
    other = by_method["lora_mixer"].read_bytes()
    # what kill -9 leaves mid-write: a hidden partial temp file of the result, no tables yet
    (out / f".{by_method['lora'].name}.x1y2z3.tmp").write_text('{"schema": "lorabench-mix')
    (out / "mixture.md").unlink()
    assert cli.main(["mixture", *TINY, "--method", "lora", "--out", str(out)]) == 0  # the first run again
    files = mixture_files(out)
    records = [json.loads(f.read_text()) for f in files]
    assert sorted(r["method"] for r in records) == ["lora", "lora_mixer"]  # both still there, one each
    assert by_method["lora"] in files  # the same config: the same run id, its own file rewritten
    assert by_method["lora_mixer"].read_bytes() == other  # the other result untouched
    md = (out / "mixture.md").read_text()
    assert md.count("| single-task LoRA (r=8) |") == 1 and md.count("| lora_mixer (E=2, k=1, r=8) |") == 1


def sst2_folder(root: Path, train: str) -> Path:
    (root / "SST-2").mkdir(parents=True)
    (root / "SST-2" / "train.tsv").write_text(f"sentence\tlabel\n{train}\t1\na dull film\t0\n")
    (root / "SST-2" / "dev.tsv").write_text("sentence\tlabel\na fine film\t1\na dull film\t0\n")
    return root


def test_the_run_id_covers_the_data_and_the_experts_not_where_they_live(tmp_path, adapters):
    from lorabench.commands.mixture import identity
    from lorabench.mixtures.config import MixtureConfig
    from lorabench.mixtures.frozen import read_experts

    def rid(data_dir: Path, **settings) -> str:
        cfg = MixtureConfig(tasks=["sst2"], data_dir=str(data_dir), **settings).check()
        return identity(cfg, read_experts(cfg.experts_from) if cfg.experts_from else None)[0]

    a = rid(sst2_folder(tmp_path / "a", "a fine film"))
    assert rid(sst2_folder(tmp_path / "copy", "a fine film")) == a  # the same bytes elsewhere: the same run
    assert rid(sst2_folder(tmp_path / "b", "a great film")) != a  # other training data: another run
    assert rid(tmp_path / "a", lr=1e-3) != a and rid(tmp_path / "a", rsl_weight=0.01) == a  # 0.01: the default
    copies = [shutil.copytree(d, tmp_path / f"copy-{i}") for i, d in enumerate(adapters)]
    frozen = rid(tmp_path / "a", experts_from=[str(d) for d in adapters], k=1)
    assert rid(tmp_path / "a", experts_from=[str(d) for d in copies], k=1) == frozen
    assert rid(tmp_path / "a", experts_from=[str(d) for d in adapters[::-1]], k=1) != frozen  # expert order


@needs_glue
def test_table_reads_folders_files_and_an_old_mixture_json(two_runs, tmp_path, capsys):
    old = tmp_path / "old"
    old.mkdir()
    first = mixture_files(two_runs)[0]
    shutil.copy(first, old / "mixture.json")  # as an earlier version wrote it
    capsys.readouterr()
    assert cli.main(["mixture", "--table", str(two_runs), str(old)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "| ok |" in line]
    assert len(rows) == 3
    assert cli.main(["mixture", "--table", str(old / "mixture.json"), str(first), "--out", str(tmp_path / "t")]) == 0
    assert (tmp_path / "t" / "table.md").read_text().count("| ok |") == 2


# ---- 7. a table never written over an input -----------------------------------------------------------


@needs_glue
def test_table_out_never_writes_over_an_input(two_runs, tmp_path, capsys):
    folder = tmp_path / "x"
    shutil.copytree(two_runs, folder)
    legacy = folder / "mixture.json"
    if not legacy.exists():
        shutil.copy(mixture_files(folder)[0], legacy)  # an old result beside the new ones
    before = {p: p.read_bytes() for p in folder.iterdir()}
    refused(["--table", str(legacy), "--out", str(legacy)], capsys, tmp_path, "would write over the input")
    newest = mixture_files(folder)[0]
    refused(["--table", str(folder), "--out", str(newest)], capsys, tmp_path, "would write over the input")
    assert {p: p.read_bytes() for p in folder.iterdir()} == before


# ---- 2. the same adapter twice --------------------------------------------------------------------------


def test_the_same_adapter_folder_twice_is_refused(adapters, tmp_path, capsys, no_compute):
    a = str(adapters[0])
    refused([*TINY, "--method", "lora_mixer", "--experts-from", a, a, "--out", str(tmp_path / "out")], capsys,
            tmp_path, f"expert adapter {a} is given twice", "pass each adapter once")
    link = tmp_path / "link"
    link.symlink_to(adapters[0], target_is_directory=True)
    refused([*TINY, "--method", "lora_mixer", "--experts-from", a, str(link), "--out", str(tmp_path / "out")], capsys,
            tmp_path, f"expert adapter {a} and {link} are the same folder", "pass each adapter once")


def test_two_folders_with_the_same_adapter_weights_are_refused(adapters, tmp_path, capsys, no_compute):
    copy = shutil.copytree(adapters[0], tmp_path / "copy")
    refused([*TINY, "--method", "lora_mixer", "--experts-from", str(adapters[0]), str(copy),
             "--out", str(tmp_path / "out")], capsys, tmp_path, str(adapters[0]), str(copy), "same LoRA weights",
            "pass each adapter once")


# ---- 3. numbers finite and in range ------------------------------------------------------------------------


@pytest.mark.parametrize("flag, value, words", [
    ("--lr", "inf", "lr must be a finite number, got inf"),
    ("--lr", "nan", "lr must be a finite number, got nan"),
    ("--alpha", "inf", "alpha must be a finite number, got inf"),
    ("--rsl-weight", "inf", "rsl_weight must be a finite number, got inf"),
    ("--temperature", "nan", "temperature must be a finite number, got nan"),
    ("--weight-decay", "inf", "weight_decay must be a finite number, got inf"),
    ("--temperature", "0", "temperature must be > 0, got 0.0"),
    ("--alpha", "-1", "alpha must be > 0, got -1.0"),
    ("--seed", "-1", "seed must be in [0, 2^32), got -1"),
])
def test_a_number_out_of_range_is_refused_naming_its_flag(flag, value, words, tmp_path, capsys, no_compute):
    refused([*TINY, flag, value, "--out", str(tmp_path / "out")], capsys, tmp_path, words, f"e.g. {flag} ")


@pytest.mark.parametrize("line, words", [
    ("lr: .inf", ("lr must be a finite number, got inf", "--lr")),
    ("warmup_ratio: 1.5", ("warmup_ratio must be in [0, 1), got 1.5", "warmup_ratio: 0.06 in the --config file")),
    ("max_grad_norm: -1", ("max_grad_norm must be >= 0", "max_grad_norm: 1 in the --config file")),
    # ---- 5. types
    ('lr: "abc"', ("lr must be a number, got 'abc'", "--lr 5e-4")),
    ("layers: two", ("layers must be an integer, got 'two'", "--layers")),
    ("batch_size: 1.5", ("batch_size must be an integer, got 1.5", "--batch-size")),
    ("tasks: [1, 2]", ("tasks must be a list of strings", "--tasks sst2,mrpc")),
    ("experts: [4]", ("experts must be an integer, got [4]", "--experts 4")),
])
def test_a_yaml_value_of_the_wrong_type_or_range_is_refused(line, words, tmp_path, capsys, no_compute):
    config = tmp_path / "mix.yaml"
    config.write_text(f"tasks: [sst2]\nmethod: lora_mixer\n{line}\n")
    refused(["--config", str(config), "--out", str(tmp_path / "out")], capsys, tmp_path, *words)


def test_numbers_given_as_strings_in_yaml_are_read_as_numbers(tmp_path):
    from lorabench.commands import mixture
    from lorabench.commands.args import Parser

    config = tmp_path / "mix.yaml"
    config.write_text('tasks: [sst2]\nexperts: "4"\nk: "2"\nlr: "1e-3"\nalpha: 16\n')
    p = Parser(prog="lorabench")
    mixture.add_parser(p.add_subparsers(dest="command"))
    cfg = mixture.config_from(p.parse_args(["mixture", "--config", str(config)]))
    assert (cfg.experts, cfg.k, cfg.lr, cfg.alpha) == (4, 2, 1e-3, 16.0)
    assert isinstance(cfg.alpha, float)


# ---- 4. adapters of another architecture ---------------------------------------------------------------------


@needs_glue
def test_adapters_of_a_2_layer_model_are_refused_in_a_3_layer_model(adapters, tmp_path, capsys):
    argv = [*TINY, "--method", "lora_mixer", "--experts-from", *map(str, adapters), "--out", str(tmp_path / "out")]
    argv[argv.index("--layers") + 1] = "3"
    refused(argv, capsys, tmp_path, "saved from another architecture", "layers 2 (this model: 3)", "--layers 2")


# ---- 6. an --out that cannot be written -------------------------------------------------------------------------


def test_an_out_below_a_file_is_refused_before_compute(tmp_path, capsys, no_compute):
    (tmp_path / "file").write_text("x")
    refused([*TINY, "--out", str(tmp_path / "file" / "out")], capsys, tmp_path, "cannot write in", "--out")
    refused([*TINY, "--out", str(tmp_path / "file")], capsys, tmp_path, "is a file, not a folder")


@needs_glue
def test_a_table_out_below_a_file_is_refused(two_runs, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    result = next(two_runs.glob("mixture*.json"))
    refused(["--table", str(result), "--out", str(tmp_path / "file" / "t")], capsys, tmp_path, "cannot write in")
    refused(["--table", str(two_runs), "--out", str(tmp_path / "file")], capsys, tmp_path, "is a file, not a folder")
