"""Experiment trackers for one run (``--log-with``), through accelerate's tracker classes
(``accelerate.tracking``: ``TensorBoardTracker``, ``MLflowTracker``, ``WandBTracker``), as
``Accelerator(log_with=...)`` would build them; no hand-written writers. Offline by default:

    <logging_dir>/                     default <out>/tracking
      tensorboard/<group>/<run>/       TensorBoard event files (+ the hparams plugin's)
      mlruns/                          MLflow's local file store (tracking URI file:...), experiment <group>,
                                       unless MLFLOW_TRACKING_URI names another
      wandb/                           W&B runs, offline unless WANDB_MODE says otherwise (`wandb sync` uploads)

What is logged (the keys are the same in every tracker):

    every optimizer step     train/loss, train/lr, train/examples_per_s, train/tokens_per_s
                             (a scenario kind: its recorded train/loss points, logged when it ends)
    every evaluation         eval/<split>/<metric>
    at the end               summary/params/trainable ... summary/time/train_s ... summary/memory/... (the
                             result JSON's params, time and memory), and the resolved config as hyperparameters

``<group>`` is ``tracker_group`` (a sweep sets its own name; else ``lorabench``), ``<run>`` is
``<variant>-<task>-seed<seed>-<run id>``: every run of a sweep is its own tracker run, grouped (and
tagged, in MLflow and W&B) by the sweep. Both are folder names under ``<logging_dir>``, so each must
be one plain path component (``outputs.safe_name``): a name that would leave the folder is refused
before any tracker starts (``check_names``; a sweep checks every run's before its first run starts).
Tracker packages are optional (``pip install "lorabench[track]"``); ``check_installed`` names the
missing one before any compute.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Self

from .choices import TRACKERS
from .errors import ConfigError
from .outputs import safe_name

#: tracker -> the package it needs (import name, pip name).
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow-skinny"),
            "wandb": ("wandb", "wandb")}
DEFAULT_GROUP = "lorabench"


def resolve(log_with: str | None) -> list[str]:
    """The trackers ``log_with`` asks for; ``all`` is every installed one (as in accelerate)."""
    if log_with is None:
        return []
    if log_with == "all":
        return [t for t in TRACKERS if _installed(t)]
    return [log_with]


def check_installed(log_with: str | None) -> None:
    """A ConfigError naming ``pip install ...`` when a tracker asked for is not installed."""
    if log_with == "all" and not resolve("all"):
        raise ConfigError('--log-with all found no tracker installed; pip install "lorabench[track]" '
                          "(tensorboard and mlflow-skinny), or pip install wandb")
    for name in resolve(log_with):
        if not _installed(name):
            raise ConfigError(f"--log-with {name} needs the {PACKAGES[name][1]} package; pip install "
                              f"{PACKAGES[name][1]} (or \"lorabench[track]\"), or drop --log-with")


def _installed(name: str) -> bool:
    return importlib.util.find_spec(PACKAGES[name][0]) is not None


def run_name(cfg: Any, run_id: str) -> str:
    return f"{cfg.variant}-{cfg.task}-seed{cfg.seed}-{run_id}"


def check_names(cfg: Any, run_id: str, group_what: str = "--tracker-group") -> tuple[str, str]:
    """(group, run name) of ``cfg``'s tracker run, each one plain path component, or a ConfigError
    naming ``group_what`` (the flag or setting the group came from) and the fix."""
    group = safe_name(cfg.tracker_group or DEFAULT_GROUP, group_what)
    return group, safe_name(run_name(cfg, run_id), "tracker run name (<variant>-<task>-seed<seed>-<run id>)")


def flat(values: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``; numbers, booleans and strings as they are, the rest as text
    (the types every tracker takes as a hyperparameter)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat(value, f"{name}/"))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return out


class RunTracker:
    """The started trackers of one run; with none (``NULL``) every call does nothing."""

    def __init__(self, trackers: list | None = None):
        self.trackers = list(trackers or [])

    def log(self, values: dict[str, float], step: int) -> None:
        for t in self.trackers:
            t.log(values, step=step)

    def log_step(self, step: int, loss: float, peak_lr: float, scheduler, rates: dict[str, float]) -> None:
        """One optimizer step (``scheduler`` has stepped past it): its mean loss, the learning rate it
        used (the peak times the schedule's factor; LoRA+ and the like scale their groups from it),
        and the examples and tokens per second of training so far."""
        if self.trackers:
            lr = peak_lr * scheduler.lr_lambdas[0](scheduler.last_epoch - 1)
            self.log({"train/loss": loss, "train/lr": lr, **{f"train/{k}": v for k, v in rates.items()}}, step)

    def log_evaluation(self, entry: dict) -> None:
        """An entry of ``TrainState.history``: every metric of every dev split."""
        if self.trackers:
            self.log({f"eval/{split}/{k}": v for split, m in entry["metrics"].items() for k, v in m.items()},
                     entry["step"])

    def log_result(self, result: dict) -> None:
        """The result JSON's params, time and memory (numbers only), and its resolved config."""
        if not self.trackers:
            return
        summary = {k: v for k, v in flat({key: result.get(key) or {} for key in ("params", "time", "memory")},
                                         "summary/").items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.log(summary, (result.get("steps") or {}).get("done", 0))
        hyper = flat(result["config"]) | {"run_id": result["run_id"], "status": result["status"]}
        for t in self.trackers:
            t.store_init_configuration(hyper)

    def log_record(self, result: dict) -> None:
        """A finished scenario run's recorded curve (``train_loss`` [[step, loss]] as train/loss, each
        ``history`` entry as its evaluation), then ``log_result``: the keys a trained run logs, at the
        granularity the scenario records, written once it ends."""
        if not self.trackers:
            return
        for step, loss in result.get("train_loss") or []:
            self.log({"train/loss": loss}, int(step))
        for entry in result.get("history") or []:
            if entry.get("metrics"):
                self.log_evaluation(entry)
        self.log_result(result)

    def close(self) -> None:
        trackers, self.trackers = self.trackers, []
        for t in trackers:
            t.finish()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


NULL = RunTracker()


def open_run(cfg: Any, run_id: str) -> RunTracker:
    """Start a tracker run of each tracker ``cfg.log_with`` names (NULL for none)."""
    names = resolve(cfg.log_with)
    if not names:
        return NULL
    check_installed(cfg.log_with)
    group, name = check_names(cfg, run_id)  # folder names under root: never outside it
    root = Path(cfg.logging_dir or Path(cfg.out) / "tracking").resolve()
    tags = {"lorabench.group": group, "lorabench.run_id": run_id}
    started = []
    for tracker in names:
        started.append(_start(tracker, root, group, name, tags))
    return RunTracker(started)


def _start(tracker: str, root: Path, group: str, name: str, tags: dict[str, str]):
    from accelerate import tracking

    if tracker == "tensorboard":
        made = tracking.TensorBoardTracker(f"{group}/{name}", root / "tensorboard")
    elif tracker == "mlflow":
        if "MLFLOW_TRACKING_URI" not in os.environ:  # MLflow 3 refuses its file store without this opt-in
            import mlflow

            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((root / "mlruns").as_uri())
        made = tracking.MLflowTracker(experiment_name=group, run_name=name, tags=tags)
    else:
        os.environ.setdefault("WANDB_MODE", "offline")
        (root / "wandb").mkdir(parents=True, exist_ok=True)
        made = tracking.WandBTracker(DEFAULT_GROUP, name=name, group=group, tags=[group], dir=str(root / "wandb"))
    made.start()
    return made
