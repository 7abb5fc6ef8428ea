"""Bad input through the command line, one row per mistake a user makes.

Every row runs ``lorabench.commands.main`` in-process and must exit 2 with exactly one stderr line
``error: ...`` naming the problem and the fix (no traceback), and write nothing at all (the
results folder is never created). The one exception, ``test_foreign_json_in_report_folder``:
a stray JSON in a results folder is a warning, the report still runs.

Inputs are built in tmp_path: GLUE folders with one thing wrong, adapters saved from a
2-layer MiniLM and then damaged, run-config and sweep YAML files.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from lorabench import commands as cli

from bad_task_files import jsonl, on_task, task_file

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "results"
MINILM = ("--model", "minilm", "--layers", "2")

# ---------------------------------------------------------------- builders of bad files


def glue_folder(root: Path, task_dir: str, train: str, dev: str | None = None) -> Path:
    """A GLUE folder holding one task whose train file is ``train`` (dev: a valid copy)."""
    folder = root / "glue"
    (folder / task_dir).mkdir(parents=True)
    (folder / task_dir / "train.tsv").write_text(train)
    if dev is not None:
        (folder / task_dir / "dev.tsv").write_text(dev)
    return folder


SST2_DEV = "sentence\tlabel\na fine film\t1\na dull film\t0\n"
STSB_HEAD = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
STSB_ROW = "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane.\tAn air plane.\t{score}\n"


def yaml_file(root: Path, text: str, name: str = "config.yaml") -> Path:
    path = root / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    """A LoRA adapter saved from a 2-layer MiniLM with an SST-2 head (untrained: only loading matters)."""
    import lorabench
    from lorabench.models import load_model

    model, _ = load_model("minilm", "sst2", layers=2)
    lorabench.apply(model, "lora", r=4)
    return lorabench.save_adapter(model, tmp_path_factory.mktemp("adapter") / "a")


@pytest.fixture(scope="module")
def foreign_adapter(tmp_path_factory) -> Path:
    """The same adapter, trained on other base weights (a MiniLM whose query weights moved)."""
    import lorabench
    from lorabench.models import load_model

    model, _ = load_model("minilm", "sst2", layers=2)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("attention.self.query"):
                module.weight.add_(0.01)
    lorabench.apply(model, "lora", r=4)
    return lorabench.save_adapter(model, tmp_path_factory.mktemp("foreign") / "a")


def damaged(adapter: Path, root: Path, file: str, how: Callable[[bytes], bytes]) -> Path:
    copy = root / "adapter"
    shutil.copytree(adapter, copy)
    (copy / file).write_bytes(how((copy / file).read_bytes()))
    return copy


def no_bitsandbytes(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` raises ImportError


# ---------------------------------------------------------------- the table


@dataclass
class Case:
    id: str
    argv: Callable[..., list[str]]  # (tmp_path, out, fixtures) -> arguments after `lorabench`
    expect: tuple[str, ...]  # fragments of the one error line: the problem and the fix
    setup: Callable | None = None  # (monkeypatch) -> None


def train(*args: str) -> Callable[..., list[str]]:
    return lambda tmp, out, fx: ["train", *args, "--out", str(out)]


CASES = [
    # ---- flags of `lorabench train`
    Case("unknown-variant", train("--variant", "lorra"), ("unknown variant 'lorra'", "lora")),
    Case("negative-rank", train("--r", "-2"), ("r must be a positive integer, got -2", "r=8")),
    Case("unknown-variant-option", train("--opt", "rank=8"), ("has no option 'rank'", "its options are:", " r, alpha")),
    Case("unknown-init", train("--opt", "init=nope"), ("init", "nope", "kaiming")),
    Case("lr-zero", train("--lr", "0"), ("lr must be > 0", "--lr 5e-4")),
    Case("epochs-negative", train("--epochs", "-1"), ("epochs must be > 0, got -1", "--epochs 3")),
    Case("max-length-zero", train("--max-length", "0"), ("max_length must be > 0", "--max-length 128")),
    Case("batch-size-zero", train("--batch-size", "0"), ("batch_size must be >= 1", "--batch-size 32")),
    Case("layers-zero", train("--layers", "0"), ("layers must be >= 1", "null for all")),
    Case("empty-training-set", train("--train-limit", "0"), ("train_limit must be >= 1", "null for all")),
    Case("memory-budget-zero", train("--memory-budget", "0"), ("memory_budget must be > 0", "8GiB")),
    Case("memory-budget-words", train("--memory-budget", "eight GiB"), ("'eight GiB' is not a size", "8GiB")),
    Case("precision-unknown", train("--precision", "fp8"), ("invalid choice: 'fp8'", "--help")),
    Case("unknown-task", train("--task", "imdb"), ("unknown GLUE task 'imdb'", "SST-2")),
    Case("unknown-model-alias", train("--model", "no-such-model"), ("unknown model 'no-such-model'", "minilm")),
    Case("missing-model-folder", lambda tmp, out, fx: ["train", "--model", str(tmp / "nope"), "--out", str(out)],
         ("does not exist", "pass an existing folder")),
    Case("layers-beyond-model", train(*MINILM[:2], "--layers", "9"), ("out of range: the model has 6 layers",
                                                                     "pass 1..6")),
    Case("lm-head-on-encoder", train(*MINILM, "--head", "lm"), ("needs a decoder-only model", "use head='cls'")),
    Case("mean-pooling-with-lm-head", train(*MINILM, "--head", "lm", "--pooling", "mean"),
         ("pooling 'mean' goes with head 'cls'",)),
    Case("targets-match-nothing", train(*MINILM, "--targets", "q_proj,v_proj"),
         ("match no linear layer", "candidate names", "query")),
    Case("svd-rank-above-layer", train(*MINILM, "--variant", "pissa", "--r", "400"),
         ("r=400 is larger than min(in, out) = 384", "choose r <= 384")),
    Case("quantize-without-bitsandbytes", train(*MINILM, "--quantize", "nf4"),
         ("need bitsandbytes", "pip install 'lorabench[quant]'"), setup=no_bitsandbytes),
    # ---- run config files
    Case("config-missing", lambda tmp, out, fx: ["train", "--config", str(tmp / "none.yaml"), "--out", str(out)],
         ("does not exist", "check the path")),
    Case("config-unknown-key", lambda tmp, out, fx: ["train", "--config", str(yaml_file(tmp, "lrr: 1e-3\n")),
                                                     "--out", str(out)], ("unknown config key 'lrr'", "valid keys")),
    Case("config-not-a-mapping", lambda tmp, out, fx: ["train", "--config", str(yaml_file(tmp, "- lr\n- 1e-3\n")),
                                                       "--out", str(out)], ("must hold a mapping", "key: value")),
    Case("config-bad-yaml", lambda tmp, out, fx: ["train", "--config", str(yaml_file(tmp, "lr: [1e-3\n")),
                                                  "--out", str(out)], ("not valid YAML", "fix its syntax")),
    Case("config-wrong-type", lambda tmp, out, fx: ["train", "--config", str(yaml_file(tmp, "epochs: three\n")),
                                                    "--out", str(out)], ("epochs must be a number", "'three'")),
    # ---- GLUE folders
    Case("data-dir-not-a-folder", lambda tmp, out, fx: ["train", *MINILM, "--data-dir", str(tmp / "nope"),
                                                        "--out", str(out)], ("is not a directory", "GLUE folder")),
    Case("missing-glue-file", lambda tmp, out, fx: [
        "train", *MINILM, "--data-dir", str(glue_folder(tmp, "SST-2", "sentence\tlabel\nfine\t1\n")),
        "--out", str(out)], ("missing GLUE file", "dev.tsv", "--data-dir")),
    Case("missing-task-column", lambda tmp, out, fx: [
        "train", *MINILM, "--data-dir", str(glue_folder(tmp, "SST-2", "text\tlabel\nfine\t1\n", SST2_DEV)),
        "--out", str(out)], ("has no column 'sentence'", "right file for the task")),
    Case("malformed-row", lambda tmp, out, fx: [
        "train", *MINILM, "--data-dir", str(glue_folder(tmp, "SST-2", "sentence\tlabel\nfine\t1\textra\t0\n",
                                                       SST2_DEV)),
        "--out", str(out)], ("line 2: expected 2 tab-separated columns, found 4", "fix or remove that row")),
    Case("label-outside-label-set", lambda tmp, out, fx: [
        "train", *MINILM, "--data-dir", str(glue_folder(tmp, "SST-2", "sentence\tlabel\nfine\t7\n", SST2_DEV)),
        "--out", str(out)], ("label '7' is not one of the allowed labels 0, 1", "fix or remove that row")),
    Case("stsb-score-not-a-number", lambda tmp, out, fx: [
        "train", *MINILM, "--task", "stsb", "--data-dir",
        str(glue_folder(tmp, "STS-B", STSB_HEAD + STSB_ROW.format(score="high"), STSB_HEAD + STSB_ROW.format(score=1))),
        "--out", str(out)], ("score 'high' is not a number", "fix or remove that row")),
    Case("empty-training-file", lambda tmp, out, fx: [
        "train", *MINILM, "--data-dir", str(glue_folder(tmp, "SST-2", "sentence\tlabel\n", SST2_DEV)),
        "--out", str(out)], ("train.tsv has no examples", "re-download SST-2")),
    # ---- adapter files (`lorabench adapter DIR --model ...`)
    Case("adapter-from-another-base-model", lambda tmp, out, fx: ["adapter", str(fx["foreign_adapter"]), *MINILM],
         ("trained on other base weights", "load that base model")),
    Case("adapter-for-a-deeper-model", lambda tmp, out, fx: ["adapter", str(fx["adapter"]), *MINILM[:2],
                                                             "--layers", "1"],
         ("has no layer", "load the base model it was trained on")),
    Case("adapter-for-another-task-head", lambda tmp, out, fx: ["adapter", str(fx["adapter"]), *MINILM,
                                                                "--task", "mnli"],
         ("has shape (2,), the model expects (3,)", "task head) the adapter was trained with")),
    Case("adapter-truncated-safetensors", lambda tmp, out, fx: [
        "adapter", str(damaged(fx["adapter"], tmp, "lorabench_adapter.safetensors", lambda b: b[: len(b) // 2]))],
         ("truncated or corrupt", "save the adapter again")),
    Case("adapter-json-not-json", lambda tmp, out, fx: [
        "adapter", str(damaged(fx["adapter"], tmp, "lorabench_adapter.json", lambda b: b[: len(b) // 2]))],
         ("is not valid JSON", "save the adapter again")),
    Case("adapter-folder-missing", lambda tmp, out, fx: ["adapter", str(tmp / "nope")],
         ("no lorabench_adapter.json", "written by lorabench.save_adapter")),
    # ---- sweep files and flags
    Case("sweep-unknown-key", lambda tmp, out, fx: [
        "sweep", str(yaml_file(tmp, "variants: {lora: {lrr: [1.0e-3]}}\n", "s.yaml")), "--out", str(out)],
         ("variants.lora: unknown key 'lrr'", "valid keys")),
    Case("sweep-empty-lr-grid", lambda tmp, out, fx: [
        "sweep", str(yaml_file(tmp, "variants: {lora: {lr: []}}\n", "s.yaml")), "--out", str(out)],
         ("variants.lora.lr is an empty list", "give at least one value")),
    Case("sweep-missing-data-dir", lambda tmp, out, fx: [
        "sweep", str(yaml_file(tmp, "base: {data_dir: glue}\nvariants: {lora: null}\n", "s.yaml")), "--out", str(out)],
         ("is not a folder", "relative to the file's folder")),
    Case("sweep-unknown-preset", lambda tmp, out, fx: ["sweep", "quikc", "--out", str(out)],
         ("sweep file 'quikc' not found", "preset name", "quick")),
    Case("sweep-cpus-per-run-zero", lambda tmp, out, fx: ["sweep", "quick", "--backend", "ray", "--cpus-per-run", "0",
                                                          "--out", str(out)], ("--cpus-per-run", "positive integer")),
    # ---- report
    Case("report-folder-missing", lambda tmp, out, fx: ["report", str(tmp / "nope"), "--out", str(out)],
         ("results folder", "does not exist", "--out folder of a sweep")),
    # ---- found by the probe of 113 bad inputs (each failed before its fix)
    Case("lora-rank-above-layer", train(*MINILM, "--r", "1000"),
         ("r=1000 is larger than min(in, out) = 384", "only adds parameters", "choose r <= 384")),
    Case("lr-negative-looking", train("--lr", "-1e-3"), ("lr must be > 0, got -0.001", "--lr 5e-4")),
    Case("lr-infinite", train("--lr", "inf"), ("lr must be a finite number, got inf",)),
    Case("option-infinite", train("--alpha", "inf"), ("alpha must be a finite number, got inf",)),
    Case("max-length-beyond-positions", train(*MINILM, "--max-length", "100000"),
         ("max_length 100000 is more than the", "positions minilm has", "--max-length")),
    Case("binary-train-file", lambda tmp, out, fx: [
        "train", *MINILM, "--data-dir", str(binary_train_file(tmp)), "--out", str(out)],
         ("train.tsv is not UTF-8 text", "re-download SST-2")),
    Case("train-out-is-a-file", lambda tmp, out, fx: ["train", "--out", str(yaml_file(tmp, "x", "file"))],
         ("is a file, not a folder", "--out")),
    Case("squeeze-out-is-its-input", lambda tmp, out, fx: ["squeeze", str(fx["adapter"]), "--rank", "1",
                                                           "--out", str(fx["adapter"])],
         ("is the input adapter folder", "never overwrites its input", "pass another --out")),
    Case("adapter-onto-a-deeper-model", lambda tmp, out, fx: ["adapter", str(fx["adapter"]), *MINILM[:2]],
         ("saved from another architecture", "layers 2 (this model: 6)", "--layers 2")),
    Case("adapter-json-targets-a-string", lambda tmp, out, fx: [
        "adapter", str(damaged(fx["adapter"], tmp, "lorabench_adapter.json", edit_json(targets="query")))],
         ("lorabench_adapter.json: 'targets' must be a JSON list, got 'query'", "save the adapter again")),
    Case("adapter-json-no-targets-bad-rank", lambda tmp, out, fx: [
        "adapter", str(damaged(fx["adapter"], tmp, "lorabench_adapter.json", edit_json(targets=None, r=-3)))],
         ("lorabench_adapter.json: 'targets' is missing", "save the adapter again")),
    Case("adapter-json-negative-rank", lambda tmp, out, fx: [
        "adapter", str(damaged(fx["adapter"], tmp, "lorabench_adapter.json", edit_json(r=-3)))],
         ("lorabench_adapter.json: 'options': r must be", "save the adapter again")),
    Case("sweep-seed-in-a-variant-block", lambda tmp, out, fx: [
        "sweep", str(yaml_file(tmp, "variants: {lora: {seed: [0, 1]}}\n", "s.yaml")), "--out", str(out)],
         ("variants.lora: 'seed' cannot be a grid", "top level", "seeds: [0, 1, 2]")),
    Case("report-empty-folder", lambda tmp, out, fx: ["report", str(empty_folder(tmp)), "--out", str(out)],
         ("no lorabench results", "--out folder of a sweep")),
    Case("data-revision-with-data-dir", train(*MINILM, "--data-revision", "main", "--data-dir", str(GLUE)),
         ("--data-revision 'main' pins the hub dataset", "pass one of them")),
    Case("sweep-task-folder-without-dev-file", lambda tmp, out, fx: [
        "sweep", str(yaml_file(tmp, "variants: {lora: {}}\n", "s.yaml")), "--out", str(out),
        "--data-dir", str(glue_folder(tmp, "SST-2", SST2_DEV))],
         ("variants.lora (task sst2): missing GLUE file", "SST-2/dev.tsv")),
    Case("report-two-results-under-one-id", lambda tmp, out, fx: ["report", str(one_id_two_data(tmp)), "--out", str(out)],
         ("are both run", "record different data", "move one of them out")),
    # ---- your own task: a task file or --data, every bad-data case before any model loads
    Case("taskfile-missing-column", on_task(lambda t: task_file(t, jsonl(("good", 0), ("bad", 1)),
                                                              task="text: review\nlabel: label\nlabels: [0, 1]\n")),
         ("no column 'review'", "found: 'text', 'label'", "fix text / label")),
    Case("taskfile-label-outside-the-set", on_task(lambda t: task_file(t, jsonl(("good", 0), ("bad", 1), ("odd", 2))),),
         ("row 3: label 2 is not in labels [0, 1]", "labels found: '0': 1, '1': 1, '2': 1")),
    Case("taskfile-empty-split", on_task(lambda t: task_file(t, jsonl(("good", 0), ("bad", 1)), dev="")),
         ("has no rows",)),
    Case("taskfile-class-without-training-example", on_task(lambda t: task_file(
        t, jsonl(("good", 0), ("bad", 1)), task="text: text\nlabel: label\nlabels: [0, 1, 2]\n")),
        ("class 2 has no training example", "counts: 0: 1, 1: 1, 2: 0")),
    Case("taskfile-score-not-a-number", on_task(lambda t: task_file(
        t, jsonl(("good", 4.5), ("bad", "high")), dev=jsonl(("ok", 2.0)), task="text: text\nlabel: label\nscore_range: [0, 5]\n")),
        ("row 2: score 'high' is not a number",)),
    Case("taskfile-mixed-label-types", on_task(lambda t: task_file(t, jsonl(("good", 1), ("bad", 0), ("also", "1")))),
         ("mixes types", "int: 2", "str: 1")),
    Case("taskfile-empty-text", on_task(lambda t: task_file(t, jsonl(("good", 1), ("", 0), ("also", 1)))),
         ("1 of 3 rows have an empty text", "max_empty_text")),
    Case("taskfile-no-dev-split", on_task(lambda t: task_file(t, jsonl(("good", 1), ("bad", 0)), dev=None)),
         ("no dev split", "dev: {carve: 500, seed: 0}")),
    Case("taskfile-with-data-dir", on_task(lambda t: task_file(t, jsonl(("good", 1), ("bad", 0))), "--data-dir", str(GLUE)),
         ("--data-dir", "is for GLUE", "drop --data-dir")),
    Case("data-without-text-column", lambda tmp, out, fx: [
        "train", "--data", str(yaml_file(tmp, "text,label\nfine,1\n", "d.csv")), "--label-column", "label", *MINILM,
        "--out", str(out)], ("needs --text-column",)),
    Case("report-out-is-a-file", lambda tmp, out, fx: ["report", str(FIXTURES), "--out", str(yaml_file(tmp, "x", "f"))],
         ("is a file, not a folder", "pass a folder")),
]


def edit_json(targets: object = "keep", r: int | None = None) -> Callable[[bytes], bytes]:
    """A change to an adapter's JSON: ``targets`` replaced (None: removed), ``options.r`` set."""
    def edit(raw: bytes) -> bytes:
        config = json.loads(raw)
        if targets is None:
            del config["targets"]
        elif targets != "keep":
            config["targets"] = targets
        if r is not None:
            config["options"]["r"] = r
        return json.dumps(config).encode()
    return edit


def binary_train_file(tmp: Path) -> Path:
    folder = glue_folder(tmp, "SST-2", "", SST2_DEV)
    (folder / "SST-2" / "train.tsv").write_bytes(b"sentence\tlabel\n\x89PNG\r\n\x1a\n\xff\xfe\x00")
    return folder


def one_id_two_data(tmp: Path) -> Path:
    """Two results that claim one run id but record different train files."""
    from lorabench import ids, results
    from lorabench.config import RunConfig

    config = RunConfig.from_dict({}).resolved()
    rid = None
    for name, digit in (("a", "1"), ("b", "2")):
        data = {"source": "folder", "files": {"train": "sha256:" + digit * 64, "validation": "sha256:" + "0" * 64}}
        rid = rid or ids.run_id(config, data)  # b claims a's id
        r = results.new_result(rid, config, data=data, primary_metric="accuracy", env={}, started_at=results.now(),
                               status="ok")
        (tmp / "runs" / name).mkdir(parents=True)
        results.write_json_atomic(tmp / "runs" / name / f"run-{rid}.json", r)
    return tmp / "runs"


def empty_folder(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def test_the_table_is_big_and_distinct():
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_one_error_line(case, tmp_path, capsys, monkeypatch, request):
    if case.setup is not None:
        case.setup(monkeypatch)
    out = tmp_path / "results"
    argv = case.argv(tmp_path, out, _LazyFixtures(request))
    if any(str(GLUE) in a for a in argv) and not (GLUE / "SST-2").is_dir():
        pytest.skip(f"GLUE data not found at {GLUE}")
    capsys.readouterr()
    before = files_under(tmp_path)
    rc = cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in case.expect:
        assert fragment in lines[0], (fragment, lines[0])
    assert not out.exists()  # nothing ran, nothing written
    assert files_under(tmp_path) == before  # nor anywhere else under the test's folder


class _LazyFixtures(dict):
    """``fx["adapter"]`` builds the module fixture only for the rows that use it."""

    def __init__(self, request):
        super().__init__()
        self.request = request

    def __getitem__(self, name):
        return self.request.getfixturevalue(name)


def test_the_intact_adapter_loads(adapter, capsys):
    """The adapter rows fail because of what each one damaged, not because the command is broken."""
    assert cli.main(["adapter", str(adapter), *MINILM]) == 0
    captured = capsys.readouterr()
    assert "variant lora (" in captured.out and "r=4" in captured.out and "loads onto minilm (sst2, head cls): ok" in captured.out
    assert captured.err == ""
    assert cli.main(["adapter", str(adapter)]) == 0  # without a model: only the files are read
    assert "trained on minilm" in capsys.readouterr().out


def test_debug_shows_the_traceback_instead(tmp_path):
    from lorabench.config import ConfigError

    with pytest.raises(ConfigError, match="lr must be > 0"):
        cli.main(["train", "--lr", "0", "--out", str(tmp_path / "results"), "--debug"])
    assert not (tmp_path / "results").exists()


def test_foreign_json_in_report_folder_is_a_warning_not_an_error(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    for p in sorted(FIXTURES.glob("run-*.json"))[:4]:
        shutil.copy(p, folder / p.name)
    (folder / "notes.json").write_text(json.dumps({"author": "someone else", "runs": 3}))
    # a real process: pytest would otherwise swallow the warning the user sees on stderr
    done = subprocess.run([sys.executable, "-m", "lorabench", "report", str(folder), "--out", str(tmp_path / "report"),
                           "--no-plots"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: skipping ") and "notes.json" in warnings[0], done.stderr
    assert "not a lorabench result" in warnings[0] and "Traceback" not in done.stderr
    assert any((tmp_path / "report").iterdir())  # the report was still written
