"""The ``prune`` kind as a run: one method at one sparsity, filled into the result envelope.

    lorabench train --kind prune --scenario method=loraprune --scenario sparsity=0.5 --model minilm

Envelope: ``best`` and ``final`` hold the dev metrics of the model the method delivers for
inference (LoRAPrune: the pruned model; LoRAM: the full model with the recovered adapter), measured
once after training (``metric.selected_on`` is "last"); ``history`` and ``train_loss`` are the LoRA
training's; ``params`` counts the adapter trained and the inference model; ``details`` is the
pruning record (``pruning.record.make_record``: plan, achieved sparsity, parameters before and
after, evaluation times, weight bytes). A training that diverged is ``diverged`` here too.
"""

from __future__ import annotations

from typing import Any

from . import registry
from .job import prepare_job
from .record import make_record
from .settings import PruneSettings


def run(cfg: Any, result: dict, *, progress: bool = True) -> None:
    """Train and prune ``cfg`` (kind prune) and fill ``result`` in place."""
    s = PruneSettings(**cfg.scenario)
    job = prepare_job(cfg, [s.sparsity], keep_first=s.keep_first, keep_last=s.keep_last)
    opts = s.method_options()
    outcome = registry.get(s.method)().run(job, opts, s.sparsity)
    record = make_record(s.method, s.options, s.sparsity, job, outcome)
    train = outcome.train
    steps = train.get("total_steps") or 0
    point = {"step": steps, "epoch": float(cfg.epochs), "metrics": outcome.dev}
    status = train.get("status") or "ok"
    result.update({
        "status": status, "error": train.get("error"),
        "best": point, "final": dict(point), "history": train.get("history") or [],
        "train_loss": train.get("train_loss") or [],
        "params": {"trainable": job.trainable, "total": outcome.params["inference"]},
        "time": {**result["time"], **(train.get("time") or {})},
        "memory": {**result["memory"], **(train.get("memory") or {})},
        "details": record,
    })
    result["metric"] = {"name": result["primary_metric"], "selected_on": "last",
                        "reported_on": next(iter(outcome.dev), None)}
