"""``--log-with``: a tiny real run logs to TensorBoard and MLflow through accelerate's trackers, and
each library's own reader (TensorBoard's event accumulator, ``mlflow.search_runs``) reads back the
values of the result JSON; tracker settings change no run id; a missing tracker and ``--pack``
are refused before any compute; a sweep groups its runs under its name."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lorabench import trackers
from lorabench.config import RunConfig
from lorabench.errors import ConfigError, SweepError

GLUE = Path(__file__).resolve().parents[2] / "shared/data/glue"
needs_glue = pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"GLUE data not found at {GLUE}")
TINY = {"model": "minilm", "layers": 2, "task": "sst2", "train_limit": 32, "eval_limit": 16, "max_length": 16,
        "batch_size": 16, "epochs": 1, "eval_every": 1, "log_every": 1, "lr": 5e-3, "quiet": True}


def test_tracker_settings_change_no_run_id():
    plain = RunConfig.from_dict({"train_limit": 8})
    logged = RunConfig.from_dict({"train_limit": 8, "log_with": "mlflow", "logging_dir": "/tmp/x",
                                  "tracker_group": "g"})
    assert logged.resolved() == plain.resolved()
    with pytest.raises(ConfigError, match="log_with must be null or one of tensorboard, mlflow, wandb, all"):
        RunConfig.from_dict({"log_with": "neptune"})


def test_a_missing_tracker_names_the_install_before_any_compute(tmp_path, capsys, monkeypatch):
    from lorabench.commands import main

    monkeypatch.setattr(trackers, "PACKAGES", {**trackers.PACKAGES, "mlflow": ("no_such_mlflow", "mlflow-skinny")})
    with pytest.raises(ConfigError, match=r"--log-with mlflow needs the mlflow-skinny package; pip install"):
        trackers.check_installed("mlflow")
    loaded = []
    monkeypatch.setattr("lorabench.run.load", lambda cfg: loaded.append(cfg))
    rc = main(["train", "--log-with", "mlflow", "--train-limit", "8", "--out", str(tmp_path), "--quiet"])
    assert rc == 2 and loaded == [] and not list(tmp_path.glob("run-*.json"))
    assert "pip install mlflow-skinny" in capsys.readouterr().err


@needs_glue
def test_a_tiny_run_logs_what_its_result_records(tmp_path):
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lorabench.run import execute

    cfg = RunConfig.from_dict(TINY | {"log_with": "all", "tracker_group": "issue18", "out": str(tmp_path)})
    result = execute(cfg, progress=False)
    rid = result["run_id"]
    assert result["status"] == "ok" and len(result["train_loss"]) == 2 and len(result["history"]) == 2
    name = trackers.run_name(cfg, rid)

    # TensorBoard: the event files of this run, read by TensorBoard's own accumulator.
    events = EventAccumulator(str(tmp_path / "tracking" / "tensorboard" / "issue18" / name)).Reload()
    loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert loss == pytest.approx([tuple(p) for p in result["train_loss"]], rel=1e-6)
    acc = [(e.step, e.value) for e in events.Scalars("eval/validation/accuracy")]
    assert acc == pytest.approx([(h["step"], h["metrics"]["validation"]["accuracy"]) for h in result["history"]])
    lrs = [e.value for e in events.Scalars("train/lr")]
    assert lrs[0] == pytest.approx(0.0) and lrs[1] == pytest.approx(cfg.lr)  # warmup: one step of two
    assert [e.value for e in events.Scalars("summary/params/trainable")] == [result["params"]["trainable"]]
    assert all(e.value > 0 for e in events.Scalars("train/examples_per_s"))

    # MLflow: the local file store under the logging folder, read by mlflow.search_runs.
    mlflow.set_tracking_uri((tmp_path / "tracking" / "mlruns").as_uri())
    [run] = mlflow.search_runs(experiment_names=["issue18"], output_format="list")
    assert run.info.run_name == name and run.data.tags["lorabench.group"] == "issue18"
    assert run.data.tags["lorabench.run_id"] == rid
    assert run.data.params["lr"] == str(cfg.lr) and run.data.params["options/r"] == str(result["config"]["options"]["r"])
    assert run.data.params["status"] == "ok" and "log_with" not in run.data.params  # the resolved config only
    m = run.data.metrics
    assert m["summary/params/trainable"] == result["params"]["trainable"]
    assert m["summary/time/train_s"] == pytest.approx(result["time"]["train_s"])
    assert m["summary/memory/peak_rss_bytes"] == pytest.approx(result["memory"]["peak_rss_bytes"])
    history = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "eval/validation/f1_macro")
    assert [(h.step, h.value) for h in history] == pytest.approx(
        [(h["step"], h["metrics"]["validation"]["f1_macro"]) for h in result["history"]])
    assert json.loads((tmp_path / f"run-{rid}.json").read_text())["run_id"] == rid


def test_a_sweep_groups_its_runs_and_refuses_pack(tmp_path):
    from lorabench.commands import build_parser
    from lorabench.commands.sweep import sweep_from_args

    file = tmp_path / "grid.yaml"
    file.write_text("name: lr-grid\nbase: {train_limit: 8}\nvariants:\n  lora: {lr: [1.0e-3, 2.0e-3]}\n")
    args = build_parser().parse_args(["sweep", str(file), "--log-with", "tensorboard", "--seeds", "0,1"])
    sweep = sweep_from_args(args, args.config)
    assert len(sweep.runs) == 4 and {r.config.tracker_group for r in sweep.runs} == {"lr-grid"}
    assert len({trackers.run_name(r.config, r.run_id) for r in sweep.runs}) == 4  # one tracker run each
    args = build_parser().parse_args(["sweep", str(file), "--log-with", "tensorboard", "--pack", "2"])
    with pytest.raises(SweepError, match="--pack 2 trains several in one process.*drop --pack or --log-with"):
        sweep_from_args(args, args.config)


def test_wandb_is_offline_by_default_and_grouped(tmp_path, monkeypatch):
    from accelerate import tracking

    made = []

    class Recorder:  # stands in for accelerate's WandBTracker (wandb is not a test dependency)
        def __init__(self, project, **kwargs):
            made.append((project, kwargs))

        def start(self):
            made.append(os.environ.get("WANDB_MODE"))

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(tracking, "WandBTracker", Recorder)
    monkeypatch.setattr(trackers, "PACKAGES", {**trackers.PACKAGES, "wandb": ("json", "wandb")})  # "installed"
    cfg = RunConfig.from_dict({"log_with": "wandb", "tracker_group": "g", "out": str(tmp_path)})
    trackers.open_run(cfg, "abc")
    (project, kwargs), mode = made
    assert mode == "offline" and project == "lorabench"
    assert kwargs == {"name": trackers.run_name(cfg, "abc"), "group": "g", "tags": ["g"],
                      "dir": str((tmp_path / "tracking" / "wandb").resolve())}
