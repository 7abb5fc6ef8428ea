"""The ``federated`` kind as a run: one ``simulate`` filled into the result envelope (``results``).

    lorabench train --kind federated --scenario method=ffa_lora --scenario beta=0.5 --scenario clients=4

Envelope: ``history`` has one entry per round (step = round, the clients' mean training loss, the
global model's dev metrics); ``best`` and ``final`` are the last round's (no round is picked on the
reported dev split; ``metric.selected_on`` is "last"); ``time.train_s`` is the rounds' wall time
without the server's evaluations; ``details`` is the simulation's record (split, rounds with bytes and
aggregation error, bytes in all). A client or global model that diverges stops the run as
``diverged`` with the round and client in ``details.diverged_at``; the rounds before it are kept.
``--save-adapter`` saves the global model's adapter and head after the last round beside the result
(``run-<id>-adapter``), where ``lorabench eval`` and ``lorabench merge`` read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import inject
from ..adapter_files import folder_bytes
from ..checkpoint import save_adapter
from ..measure import peak_memory, reset_peak_memory
from .settings import FedSettings
from .simulate import HEADS, simulate


def run(cfg: Any, result: dict, *, progress: bool = True) -> None:
    """Simulate ``cfg`` (kind federated) and fill ``result`` in place."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reset_peak_memory(device)
    settings = FedSettings(**cfg.scenario)
    record = simulate(cfg, settings, progress=progress, keep_model=True)
    model = record.pop("model")
    rounds = record["rounds"]
    history = [{"step": r["round"], "epoch": float(r["round"]), "train_loss": r["train_loss"], "metrics": r["metrics"]}
               for r in rounds]
    last = history[-1] if history else {"step": 0, "epoch": 0.0, "metrics": {}}
    point = {"step": last["step"], "epoch": last["epoch"], "metrics": last["metrics"]}
    trainable, total = inject.count_parameters(model)
    eval_s = sum(r["eval_s"] for r in rounds)
    result.update({
        "status": record["status"], "error": record["error"],
        "best": point, "final": dict(point), "history": history,
        "train_loss": [[r["round"], r["train_loss"]] for r in rounds if r["train_loss"] is not None],
        "params": {"trainable": trainable, "total": total},
        "time": {"train_s": sum(r["time_s"] for r in rounds) - eval_s, "eval_s": eval_s,
                 "examples_per_s": None, "tokens_per_s": None},
        "memory": {**result["memory"], **peak_memory(device)},
        "details": {"heads": HEADS, **record},
    })
    result["metric"] = {"name": result["primary_metric"], "selected_on": "last",
                        "reported_on": next(iter(point["metrics"]), None)}
    if cfg.save_adapter and record["status"] == "ok":  # the global model after the last round
        folder = save_adapter(model, Path(cfg.out) / f"run-{result['run_id']}-adapter")
        result["adapter_bytes"] = folder_bytes(folder)
