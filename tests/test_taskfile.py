"""Any labelled data as a task: task files (YAML) and ``--data FILE``, over the formats users bring.

The bad-data cases (missing column, label outside the set, empty split, class without a training
example, score not a number, mixed label types, empty texts) are rows of tests/test_bad_input.py."""

from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path

import pytest

from lorabench import commands as cli
from lorabench import results
from lorabench.config import RunConfig
from lorabench.data.glue import get_task, locate
from lorabench.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
MORE = ROOT.parent / "shared" / "data" / "more"
needs_more = pytest.mark.skipif(not (MORE / "sst5").is_dir(), reason=f"non-GLUE data not found at {MORE}")
ROWS = [("a warm and funny film", "pos"), ("dull and far too long", "neg"), ("a small joy", "pos"),
        ("i want my evening back", "neg"), ("sharp writing", "pos"), ("flat, lifeless", "neg")] * 4


def write(folder: Path, fmt: str, rows=ROWS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"train.{fmt}"
    if fmt in ("csv", "tsv"):
        with open(path, "w", newline="") as f:
            w = csv.writer(f, delimiter="," if fmt == "csv" else "\t")
            w.writerow(["review", "sentiment"])
            w.writerows(rows)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"review": t, "sentiment": y}) + "\n" for t, y in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"review": [t for t, _ in rows], "sentiment": [y for _, y in rows]}), path)
    return path


def task(folder: Path, fmt: str, labels=("neg", "pos"), name: str = "reviews", extra: str = "") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\nfiles: {{train: train.{fmt}}}\ntext: review\nlabel: sentiment\n"
                    f"labels: [{', '.join(labels)}]\ndev: {{carve: 6, seed: 0}}\n{extra}")
    return path


@needs_more
def test_sst5_json_lines_and_ag_news_csv_are_tasks():
    sst5 = get_task(str(ROOT / "configs" / "tasks" / "sst5.yaml"))
    assert (sst5.name, sst5.num_labels, sst5.dev_splits, sst5.primary_metric) == ("sst5", 5, ("validation",), "accuracy")
    source = locate(None, sst5)
    train, dev = source.load(sst5, "train"), source.load(sst5, "validation")
    assert (len(train), len(dev)) == (8544, 1101)
    first = json.loads((MORE / "sst5" / "train.jsonl").read_text().splitlines()[0])
    assert train[0].text_a == first["text"] and train[0].label == first["label"]  # labels 0..4 map to themselves
    ag = get_task(str(ROOT / "configs" / "tasks" / "agnews.yaml"))
    train, dev = locate(None, ag).load(ag, "train"), locate(None, ag).load(ag, "validation")
    assert (len(train), len(dev)) == (5401, 600)  # the 6,001 rows; 600 seeded rows carved as dev
    assert not {e.text_a for e in train} & {e.text_a for e in dev}
    with open(MORE / "agnews" / "train.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert train[0].text_a == f"{row['Title'].strip()}. {row['Description'].strip()}"  # title + description
    assert train[0].label == int(row["Class Index"]) - 1  # labels [1, 2, 3, 4] -> 0..3
    assert ag.label_names == ("World", "Sports", "Business", "Sci/Tech")


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_every_format_reads_the_same_examples(fmt, tmp_path):
    write(tmp_path / "ref", "csv")
    write(tmp_path / fmt, fmt)
    ref, spec = get_task(str(task(tmp_path / "ref", "csv"))), get_task(str(task(tmp_path / fmt, fmt)))
    for split in ("train", "validation"):
        assert locate(None, spec).load(spec, split) == locate(None, ref).load(ref, split)
    assert len(locate(None, spec).load(spec, "validation")) == 6 and spec.num_labels == 2


def test_the_label_order_and_the_file_are_part_of_the_run_id(tmp_path):
    write(tmp_path, "csv")
    a = RunConfig.from_dict({"task": str(task(tmp_path, "csv", name="a"))})
    b = RunConfig.from_dict({"task": str(task(tmp_path, "csv", ("pos", "neg"), name="b"))})
    ea, eb = (locate(None, c.task_spec()).load(c.task_spec(), "train") for c in (a, b))
    assert [e.label for e in ea] == [1 - e.label for e in eb]  # the stated order decides the indices
    assert a.data_fingerprint()["mapping"]["labels"] != b.data_fingerprint()["mapping"]["labels"]
    a2 = RunConfig.from_dict({"task": str(task(tmp_path, "csv", name="b2", labels=("pos", "neg")))})
    assert a2.run_id() != b.run_id()  # only the name differs: another task
    before = b.run_id()
    write(tmp_path, "csv", ROWS[:-1])  # one row fewer: other bytes, another run
    assert RunConfig.from_dict({"task": str(tmp_path / "b.yaml")}).run_id() != before
    assert a.resolved()["task"] == "a"  # the result names the task, not the path to its file


def test_a_held_out_dataset_trains_and_reports_through_the_task_file(tmp_path):
    """A dataset that is not in the repository, described by a task file, trains end to end."""
    write(tmp_path / "data", "jsonl")
    path = task(tmp_path / "data", "jsonl")
    out = tmp_path / "runs"
    assert cli.main(["train", "--task", str(path), "--model", "minilm", "--layers", "2", "--max-length", "16",
                     "--batch-size", "6", "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    [(file, r)] = list(results.load_results(out))
    assert r["task"] == "reviews" and r["status"] == "ok" and r["data"]["source"] == "taskfile"
    assert set(r["best"]["metrics"]["validation"]) == {"accuracy", "f1_macro"}
    assert r["data"]["examples"]["train"]["count"] == 18 and r["data"]["examples"]["validation"]["count"] == 6


def test_the_one_line_form_reads_one_file(tmp_path):
    path = write(tmp_path / "mine", "csv")
    cfg = RunConfig.from_dict({"data": str(path), "text_column": "review", "label_column": "sentiment"})
    spec = cfg.task_spec()
    assert spec.name == "mine" and spec.label_names == ("neg", "pos")  # the file's values, sorted
    dev = locate(None, spec).load(spec, "validation")
    assert len(dev) == round(0.1 * len(ROWS))  # 10% of the rows, seeded
    again = RunConfig.from_dict(cfg.to_dict())  # a sweep child rebuilds it from the config file
    assert again.run_id() == cfg.run_id()
    with pytest.raises(ConfigError, match="no column 'stars'"):
        RunConfig.from_dict({"data": str(path), "text_column": "review", "label_column": "stars"})


def test_a_regression_task_file(tmp_path):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"t": f"text {i}", "s": i / 4}) + "\n" for i in range(20)))
    (tmp_path / "t.yaml").write_text("name: scores\nfiles: {train: train.jsonl}\ntext: t\nlabel: s\n"
                                     "score_range: [0, 5]\ndev: {carve: 5, seed: 1}\n")
    spec = get_task(str(tmp_path / "t.yaml"))
    assert spec.is_regression and spec.num_labels == 1 and spec.primary_metric == "pearson"
    assert sorted(e.label for e in locate(None, spec).load(spec, "validation")) == sorted(
        set(i / 4 for i in range(20)) - {e.label for e in locate(None, spec).load(spec, "train")})


def test_a_hub_task_file_pins_its_revision(tmp_path, monkeypatch):
    asked = []

    class FakeSplit:
        def __init__(self, rows):
            self.rows = rows

        def to_list(self):
            return self.rows

    def load_dataset(name, config=None, split=None, revision=None):
        asked.append((name, config, split, revision))
        return FakeSplit([{"text": "good", "label": 1}, {"text": "bad", "label": 0}] * 3)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    (tmp_path / "h.yaml").write_text("name: hubby\nhub: {dataset: someone/reviews, revision: abc123}\ntext: text\n"
                                     "label: label\nlabels: [0, 1]\n")
    cfg = RunConfig.from_dict({"task": str(tmp_path / "h.yaml")})
    fp = cfg.data_fingerprint()
    assert fp["source"] == "hub" and fp["dataset"] == "someone/reviews" and fp["revision"] == "abc123"
    assert ("someone/reviews", None, "validation", "abc123") in asked


def test_bad_task_files_name_the_fix(tmp_path):
    write(tmp_path, "csv")
    cases = {"labels: [neg, pos]\nscore_range: [0, 1]\n": "exactly one of 'labels'",
             "labels: [neg]\n": "at least 2 distinct",
             "labels: [neg, pos]\ncolour: red\n": "unknown key 'colour'",
             "labels: [neg, pos]\nmetrics: [bleu]\n": "unknown metric bleu"}
    for extra, needle in cases.items():
        (tmp_path / "x.yaml").write_text(f"name: x\nfiles: {{train: train.csv}}\ntext: review\nlabel: sentiment\n"
                                         f"dev: {{carve: 2}}\n{extra}")
        with pytest.raises(DataError, match=needle):
            get_task(str(tmp_path / "x.yaml"))
