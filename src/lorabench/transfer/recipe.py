"""The ``transfer`` kind as a run: one arm of one transfer method, filled into the result envelope.

    lorabench train --kind transfer --model mpnet --layers 4 --scenario method=trans_lora --scenario source=minilm
    lorabench train --kind transfer --model smollm2-135m --head lm --scenario method=organ --scenario position=15

The run is the method's own code (``transfer.trans_lora``, ``transfer.organ_method``: the loops of
``lorabench transfer``) restricted to the run's arm (``TransferSettings``): a distilled trans_lora arm
trains its teacher and writes its synthetic inputs, arm ``direct`` trains only the target. The arm's
dev metrics are ``best`` and ``final`` (measured once after its last epoch: ``metric.selected_on`` is
"last"); ``train_loss`` holds its first and last step's loss; ``params``, ``time`` and ``memory`` are
the arm's training (``transfer.loop``: the run's device, autocast, divergence guard, meter).
``details`` holds every arm the run trained on the way (a distilled arm's teacher ``source``), the
method's counts (synthetic inputs generated and kept; the organ's size and the matched LoRA rank) and
the source and target. A teacher that diverged makes its student's run ``diverged`` too.
``--save-adapter`` keeps the method's product beside the result as ``run-<id>-adapter``: arm
trans_lora's target adapter (read by ``lorabench eval``), with the ``synthetic.json`` it was distilled
on; arm organ's organ (organ.safetensors + organ.json, read by ``transfer.organ.load``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ..adapter_files import folder_bytes
from ..errors import ConfigError
from ..measure import peak_memory
from ..results import TIME_KEYS
from ..training.placement import placement
from .registry import get
from .settings import DISTILLED, TransferSettings


def arm_key(s: TransferSettings, record: dict) -> str:
    """The record's name of the run's arm: organ arms are named by position, LoRA by its rank."""
    if s.method == "organ" and s.arm == "organ":
        return f"organ@{record['target']['positions'][0]}"
    if s.method == "organ" and s.arm == "lora":
        return f"lora_r{record['counts']['lora_rank']}"
    return str(s.arm)


def flatten(folder: Path) -> None:
    """Move the product's own folder (``target-adapter/``, ``organ-at-<P>/``) up into ``folder``, so
    ``run-<id>-adapter`` is the adapter (or organ) itself, as every kind's is."""
    for product in [*folder.glob("target-adapter"), *folder.glob("organ-at-*")]:
        for f in product.iterdir():
            f.replace(folder / f.name)
        product.rmdir()


def epochs_of(s: TransferSettings, opts: Any) -> int:
    """The passes the run's arm trains: distillation epochs, the seed-head's epochs, or the run's."""
    if s.arm in DISTILLED:
        return opts.distill_epochs
    if s.method == "trans_lora" and s.arm == "no_adapter":
        return opts.head_epochs
    return opts.epochs


def run(cfg: Any, result: dict, *, progress: bool = True) -> None:
    """Run ``cfg``'s arm (kind transfer) and fill ``result`` in place."""
    s = TransferSettings(**cfg.scenario)
    cls = get(s.method)
    try:
        opts = cls.Options(**s.options(cfg))  # the method's own checks, before anything loads
    except TypeError as e:
        raise ConfigError(f"bad {s.method} settings: {e}") from None
    keep = Path(cfg.out) / f"run-{result['run_id']}-adapter" if cfg.save_adapter else None
    with tempfile.TemporaryDirectory(prefix="lorabench-transfer-") as scratch:
        record = cls.run(opts, keep or Path(scratch), progress=progress)
    name = arm_key(s, record)
    if keep is not None:
        flatten(keep)
    arm = record["arms"][name]
    stats = arm.get("train") or {}
    status, error = arm["status"], arm.get("error")
    if status == "skipped":  # its teacher diverged: this arm never trained
        teacher = record["arms"].get("source") or {}
        status, error = "diverged", f"its teacher (arm source) diverged: {teacher.get('error')}"
    dev = arm.get("dev") or {}
    steps = stats.get("steps") or 0
    point = {"step": steps, "epoch": float(epochs_of(s, opts)) if stats else 0.0, "metrics": dev}
    losses = [[1, stats["first_loss"]], [steps, stats["last_loss"]]] if stats.get("first_loss") is not None else []
    time = stats.get("time") or {}
    result.update({
        "status": status, "error": error, "best": point, "final": dict(point), "history": [point],
        "train_loss": losses[:1] if steps == 1 else losses,
        "params": {"trainable": arm.get("trainable", 0), "total": arm.get("total", 0)},
        "time": {**result["time"], **{k: time.get(k, 0.0) for k in TIME_KEYS}, "eval_s": arm.get("eval_s", 0.0)},
        # an arm that trains nothing: the process's peak on the run's device, its evaluation included
        "memory": {**result["memory"], **(stats.get("memory") or peak_memory(placement(cfg.precision)[0])),
                   "micro_batch_size": cfg.batch_size,
                   "grad_accum_steps": 1},
        "adapter_bytes": folder_bytes(keep) if keep is not None and keep.is_dir() else None,
        "details": {"method": s.method, "arm": name, "target": record["target"],
                    **({"source": record["source"]} if s.method == "organ" or "source" in s.uses() else {}),
                    "counts": record["counts"],
                    "arms": {k: {"status": a["status"], "error": a.get("error"), "dev": a.get("dev"),
                                 "trainable": a.get("trainable"), **{x: a[x] for x in ("position", "rank",
                                                                                      "reload_max_abs_diff") if x in a},
                                 **{x: (a.get("train") or {}).get(x) for x in ("train_s", "first_loss", "last_loss")}}
                             for k, a in record["arms"].items()},
                    "arm_notes": {k: v for k, v in record.get("arm_notes", {}).items()
                                  if k in record["arms"] or (k == "organ@P" and name.startswith("organ@"))}},
    })
    if stats.get("precision"):
        result["env"] = {**result["env"], "precision": stats["precision"]}
    result["metric"] = {"name": result["primary_metric"], "selected_on": "last", "reported_on": next(iter(dev), None)}
