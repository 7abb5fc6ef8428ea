"""Execute one run: config -> model + data -> adapter -> fit -> one result JSON.

Errors in the inputs (config, model, data, variant options, a memory budget too small
for the weights, an output folder that cannot be written) surface before any training and
write no result. Once training has started, every outcome is recorded: the result JSON is
written with status "ok", "diverged", "oom" or "error" (with the message). A crash ("oom",
"error") is then raised as ``RunFailed`` so that a caller (the CLI) can exit non-zero; a
diverged run is a result like any other and is returned (its status says so). A run stopped
by Ctrl-C (KeyboardInterrupt) writes no result, so a rerun, or a resumed sweep, redoes it.

With ``num_processes > 1`` the run is launched on that many processes (``lorabench.launch``)
unless a launcher already started this one; every rank trains, rank 0 alone writes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from . import distributed, inject, results
from .checkpoint import save_adapter
from .launch import launch
from .config import ConfigError, RunConfig
from .measure import check_memory_budget, environment
from .train import TrainState, fit, set_seed


class RunFailed(RuntimeError):
    """Training started and then crashed (status "oom" or "error"); the result JSON says why."""

    def __init__(self, message: str, result: dict, path: Path):
        super().__init__(message)
        self.result = result
        self.path = path


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def load(cfg: RunConfig):
    """Task, adapted model, tokenizer and loaders for ``cfg`` (raises on bad input)."""
    from .data import build_loaders, get_task
    from .models import load_model

    if cfg.quantize is not None:
        from . import quant

        quant.bitsandbytes()  # says how to install it, before anything is loaded
    task = get_task(cfg.task)
    set_seed(cfg.seed)  # the task head and the adapter are initialised randomly
    model, tokenizer = load_model(cfg.model, task, head=cfg.head, layers=cfg.layers, pooling=cfg.pooling,
                                  trust_remote_code=cfg.trust_remote_code)
    inject.apply(model, cfg.variant, cfg.targets, **cfg.variant_options())
    # QLoRA-style: every frozen linear layer stored in 4 bits, after apply, so data-free inits
    # see the full-precision W and a residual init (PiSSA) stores its exact residual in 4 bits
    # once (QPiSSA); reload a saved adapter the same way round. A data-driven init (LoRA-GA)
    # needs dL/dW of the full-precision W: it runs on the first batches, then W is quantized.
    prepare_first = cfg.quantize is not None and inject.needs_data(model)
    if cfg.quantize is not None and not prepare_first:
        quant.quantize_model(model, "all-linear", quant_type=cfg.quantize)
    if not prepare_first:
        check_memory_budget(model, cfg.budget_bytes(), cfg.model)  # fail before tokenizing anything
    format_fn = None
    if cfg.head == "lm":
        from .data.prompts import prompt_format_fn

        format_fn = prompt_format_fn(task)
    train_loader, dev_loaders = build_loaders(
        task, tokenizer, data_dir=cfg.data_dir, max_length=cfg.max_length, batch_size=cfg.batch_size,
        eval_batch_size=cfg.eval_batch_size, train_limit=cfg.train_limit, eval_limit=cfg.eval_limit,
        seed=cfg.seed, group_by_length=cfg.group_by_length, format_fn=format_fn, progress=not cfg.quiet,
    )
    if prepare_first:
        _prepare_then_quantize(model, train_loader, cfg)
        check_memory_budget(model, cfg.budget_bytes(), cfg.model)
    return task, model, tokenizer, train_loader, dev_loaders


def _prepare_then_quantize(model, train_loader, cfg: RunConfig) -> None:
    """The data-driven init on the batches ``fit`` would give it (on the GPU when there is one),
    then the frozen layers (the residual W0 - s B0 A0 for LoRA-GA) stored in 4 bits."""
    from accelerate.utils import send_to_device

    from . import quant
    from .train import first_batches

    batches = first_batches(train_loader)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    inject.prepare(model, [send_to_device(b, device) for b in batches])
    model.to("cpu")  # quantized as without a data-driven init; accelerate places it afterwards
    quant.quantize_model(model, "all-linear", quant_type=cfg.quantize)


def execute(cfg: RunConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run ``cfg`` and write its result to ``results.result_path(cfg.out, run id)``.

    Returns the result dict (``result["path"]`` is not part of it; use ``result_path``).
    Raises the input error (ConfigError, ModelError, DataError, VariantError, ResultWriteError)
    before training, or ``RunFailed`` after writing an "oom" / "error" result.
    """
    cfg = distributed.for_this_launch(cfg)
    resolved = cfg.resolved()
    rid = results.run_id(resolved)
    path = results.result_path(cfg.out, rid)
    main = distributed.is_main()  # rank 0 writes; other ranks return their result dict
    if cfg.save_adapter and distributed.uses_fsdp():
        raise ConfigError("--save-adapter is not supported under FSDP (each rank holds a shard of the adapter); "
                          "drop it, or train with DDP (--num-processes N) to save the adapter")
    if main:
        results.check_writable(cfg.out)
    if distributed.needs_launch(cfg):
        return launch(dataclasses.replace(cfg, quiet=cfg.quiet or not progress), rid, path)
    started = _now()
    task, model, _tokenizer, train_loader, dev_loaders = load(cfg)
    trainable, total = inject.count_parameters(model)

    state = TrainState()
    error: BaseException | None = None
    try:
        fit(model, train_loader, dev_loaders, task, cfg, progress=progress, state=state)
    except ConfigError:
        raise  # the CUDA probe found the memory budget too small: an input error
    except torch.cuda.OutOfMemoryError as e:
        state.status, state.error, error = "oom", f"CUDA out of memory: {str(e).splitlines()[0]}", e
    except Exception as e:  # recorded in the result, then raised as RunFailed
        state.status, state.error, error = "error", f"{type(e).__name__}: {e}", e

    adapter_bytes = None
    if cfg.save_adapter and state.status == "ok" and main:
        adapter_dir = Path(cfg.out) / f"run-{rid}-adapter"
        save_adapter(model, adapter_dir)
        adapter_bytes = _dir_bytes(adapter_dir)

    device = torch.device(state.memory.get("device", "cuda" if torch.cuda.is_available() else "cpu"))
    time = {"train_s": 0.0, "eval_s": 0.0, "examples_per_s": 0.0, "tokens_per_s": 0.0, **state.time}
    memory = {"device": device.type, "peak_allocated_bytes": None, "peak_reserved_bytes": None,
              "peak_rss_bytes": None, "budget_bytes": cfg.budget_bytes(),
              "micro_batch_size": cfg.batch_size // cfg.num_processes, "grad_accum_steps": cfg.grad_accum,
              "oom_retries": 0, **state.memory}
    result = {
        "schema": results.SCHEMA,
        "schema_version": results.SCHEMA_VERSION,
        "run_id": rid,
        "status": state.status,
        "error": state.error,
        "config": resolved,
        "task": task.name,
        "variant": cfg.variant,
        "model": cfg.model,
        "pooling": getattr(model, "pooling", "cls"),
        "seed": cfg.seed,
        "primary_metric": task.primary_metric,
        "best": state.best,
        "final": state.final,
        "history": state.history,
        "train_loss": state.train_loss,
        "params": {"trainable": trainable, "total": total},
        "adapter_bytes": adapter_bytes,
        "time": time,
        "memory": memory,
        "env": {**environment(device), "precision": state.precision},
        "distributed": state.distributed,
        "steps": {"done": state.step, "total": state.total_steps, "per_epoch": state.steps_per_epoch},
        "targets": inject.state_of(model).targets,
        "paths": {"out": str(cfg.out), "data_dir": cfg.data_dir, "cwd": os.getcwd()},
        "started_at": started,
        "finished_at": _now(),
    }
    if main:
        results.write_json_atomic(path, result)
    if error is not None:
        raise RunFailed(f"run {rid} {state.status}: {state.error} (result: {path})", result, path) from error
    if state.status == "diverged":
        warnings.warn(f"run {rid} diverged: {state.error}", stacklevel=2)
    return result
