"""Divergence (``lorabench.divergence``): checked before every optimizer step and once more after
the last one, with the trained weights, so a run whose final update blew the model up is recorded
``diverged``, never ``ok``, and the report never picks it as the best configuration."""

from __future__ import annotations

import math
from pathlib import Path

from lorabench import results
from lorabench.config import RunConfig
from lorabench.divergence import DIVERGENCE_FACTOR, divergence
from lorabench.report import build_report
from lorabench.run import execute

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
TINY = dict(model="minilm", layers=2, train_limit=64, epochs=1, max_length=32, eval_limit=64, quiet=True,
            batch_size=32, data_dir=str(GLUE))


def test_divergence_is_a_non_finite_or_exploded_loss():
    assert divergence(0.7, 0.69) is None
    assert divergence(5.0, 0.69) is None  # worse, not diverged
    assert "nan" in divergence(math.nan, 0.69) and "inf" in divergence(math.inf, None)
    assert "exploded" in divergence(DIVERGENCE_FACTOR * 0.69 + 11, 0.69)
    assert divergence(9.0, 0.01) is None  # tiny first losses: at least 10 before it counts


def test_a_final_update_that_blows_up_the_model_is_recorded_diverged(tmp_path):
    # Two steps at lr 1e4: each step's loss before its update is fine, but the last update leaves
    # lora_B at ~1e4 and the training loss four orders of magnitude above the first step's.
    ok = execute(RunConfig(**TINY, lr=1e-3, out=str(tmp_path)), progress=False)
    bad = execute(RunConfig(**TINY, lr=1e4, out=str(tmp_path)), progress=False)
    assert ok["status"] == "ok" and ok["steps"]["done"] == 2
    assert bad["status"] == "diverged" and bad["steps"]["done"] == 2
    assert "after the last update" in bad["error"] and "lower the learning rate" in bad["error"]
    stored = results.status_of(results.result_path(tmp_path, bad["run_id"]))
    assert stored == "diverged"
    report = build_report(tmp_path)
    (best,) = report.best.values()
    assert best.runs[0].run_id == ok["run_id"]  # the diverged run is never the best configuration


def test_a_nan_dev_metric_after_the_last_update_is_divergence(tmp_path, monkeypatch):
    from lorabench import train

    real = train.evaluate

    def nan_metrics(*args, **kwargs):
        out = real(*args, **kwargs)
        return {split: {k: math.nan for k in m} for split, m in out.items()}

    monkeypatch.setattr(train, "evaluate", nan_metrics)
    result = execute(RunConfig(**TINY, lr=1e-3, out=str(tmp_path)), progress=False)
    assert result["status"] == "diverged" and "dev accuracy is nan" in result["error"]
