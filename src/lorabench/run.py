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

``main`` is the one child entry point, ``python -m lorabench.run <config.yaml> <run id>``: the
rank processes of a data-parallel run and the run processes of a sweep both run it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import (
    distributed,
    forgetting,
    fourbit,
    inject,
    models,
    plugins,
    quant,
    regularizers,
    results,
    trackers,
)
from .adapter_files import folder_bytes
from .checkpoint import save_adapter
from .config import RunConfig, load_yaml
from .data import build_loaders, get_task
from .data.fingerprint import read_record
from .data.prompts import prompt_format_fn
from .errors import INPUT_ERRORS, ConfigError, RunFailed
from .federated import recipe as federated_recipe
from .launch import die_with_parent, launch
from .measure import check_memory_budget, environment
from .merging import recipe as merge_recipe
from .merging import recycle as recycle_recipe
from .mixtures import recipe as mixture_recipe
from .outputs import check_output_folder
from .pruning import recipe as prune_recipe
from .segmentation import recipe as segment_recipe
from .train import TrainState, first_batches, fit, set_seed
from .transfer import recipe as transfer_recipe


def load_base(cfg: RunConfig):
    """(model, tokenizer): the base model ``cfg`` names, with the task's head, before any adapter."""
    return models.load_model(cfg.model, get_task(cfg.task), head=cfg.head, layers=cfg.layers, pooling=cfg.pooling,
                             trust_remote_code=cfg.trust_remote_code, dropout=cfg.model_dropout)


def load(cfg: RunConfig):
    """Task, adapted model, tokenizer and loaders for ``cfg`` (raises on bad input)."""
    if cfg.quantize is not None:
        fourbit.bitsandbytes()  # says how to install it, before anything is loaded
    task = get_task(cfg.task)
    set_seed(cfg.seed)  # the task head and the adapter are initialised randomly
    model, tokenizer = load_base(cfg)
    check_max_length(model, tokenizer, cfg.max_length, cfg.model)
    regularizers.attach(model, cfg.regularizer)  # before apply: it keeps a frozen copy of the base
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
        format_fn = prompt_format_fn(task)
    train_loader, dev_loaders = build_loaders(
        task, tokenizer, data_dir=cfg.data_dir, max_length=cfg.max_length, batch_size=cfg.batch_size,
        eval_batch_size=cfg.eval_batch_size, train_limit=cfg.train_limit, eval_limit=cfg.eval_limit,
        data_revision=cfg.data_revision, val_size=cfg.val_size, seed=cfg.seed, group_by_length=cfg.group_by_length, format_fn=format_fn, progress=not cfg.quiet,
    )
    if prepare_first:
        _prepare_then_quantize(model, train_loader, cfg)
        check_memory_budget(model, cfg.budget_bytes(), cfg.model)
    return task, model, tokenizer, train_loader, dev_loaders


def check_max_length(model, tokenizer, max_length: int, name: str) -> None:
    """``max_length`` within the positions the model has (checked before any text is tokenized)."""
    config = getattr(model, "config", None)
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    if getattr(config, "model_type", None) in ("roberta", "xlm-roberta", "mpnet", "camembert"):
        limits[0] = limits[0] - 2 if limits[0] else None  # two positions are the padding offset
    limits = [n for n in limits if isinstance(n, int) and 0 < n < 1_000_000]
    if limits and max_length > min(limits):
        raise ConfigError(f"max_length {max_length} is more than the {min(limits)} positions {name} has; "
                          f"use --max-length {min(limits)} or less")


def _prepare_then_quantize(model, train_loader, cfg: RunConfig) -> None:
    """The data-driven init on the batches ``fit`` would give it (on the GPU when there is one),
    then the frozen layers (the residual W0 - s B0 A0 for LoRA-GA) stored in 4 bits."""
    from accelerate.utils import send_to_device

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
    data = cfg.data_fingerprint()  # the checksums of the split files (or the hub revision) it will read
    rid = results.run_id(resolved, data)
    path = results.result_path(cfg.out, rid)
    main = distributed.is_main()  # rank 0 writes; other ranks return their result dict
    if cfg.save_adapter and distributed.uses_fsdp():
        raise ConfigError("--save-adapter is not supported under FSDP (each rank holds a shard of the adapter); "
                          "drop it, or train with DDP (--num-processes N) to save the adapter")
    if main:
        results.check_writable(cfg.out)
    trackers.check_installed(cfg.log_with)  # says what to pip install, before anything is loaded
    if cfg.log_with is not None:
        trackers.check_names(cfg, rid)  # tracker group and run name: plain path components
        if main:  # the tracker's folder too: a bad input before compute, not an error after it
            check_output_folder(cfg.logging_dir or Path(cfg.out) / "tracking", "--logging-dir")
    if cfg.kind != "run":
        return execute_scenario(cfg, rid, data, path, progress=progress)
    if distributed.needs_launch(cfg):
        return launch(dataclasses.replace(cfg, quiet=cfg.quiet or not progress), rid, path)
    started = results.now()
    task, model, tokenizer, train_loader, dev_loaders = load(cfg)
    # The decoder's language model on general text, before (= the base: adapters start as the identity) and after
    measured = cfg.head == "lm" and main and not distributed.uses_fsdp()
    base_text = forgetting.measure_base(model, tokenizer) if measured else None
    state = TrainState()
    error: BaseException | None = None
    with trackers.open_run(cfg, rid) if main else trackers.NULL as tracker:  # closed however the run ends
        try:
            fit(model, train_loader, dev_loaders, task, cfg, progress=progress, state=state, tracker=tracker)
        except ConfigError:
            raise  # the CUDA probe found the memory budget too small: an input error
        except Exception as e:  # recorded in the result, then raised as RunFailed
            (state.status, state.error), error = crash(e), e

        adapter_bytes = None
        if cfg.save_adapter and state.status == "ok" and main:
            adapter_bytes = save_run_adapter(cfg, rid, model)

        result = result_of(cfg, rid, data, started, task, model, state, train_loader, dev_loaders, adapter_bytes)
        if base_text is not None:
            result["forgetting"] = measure_forgetting(model, base_text, state.status)
        tracker.log_result(result)
    return finish(path, result, error, write=main)


def crash(e: BaseException) -> tuple[str, str]:
    """(status, message) a run that crashed while training is recorded with."""
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return "oom", f"CUDA out of memory: {str(e).splitlines()[0]}"
    return "error", f"{type(e).__name__}: {e}"


def finish(path: Path, result: dict[str, Any], error: BaseException | None, write: bool = True) -> dict[str, Any]:
    """Write the result (whatever its status), then raise a crash as ``RunFailed`` or warn of a
    divergence; the result otherwise. The end of every kind of run."""
    if write:
        results.write_json_atomic(path, result)
    rid, status = result["run_id"], result["status"]
    if error is not None:
        raise RunFailed(f"run {rid} {status}: {result['error']} (result: {path})", result, path) from error
    if status == "diverged":
        warnings.warn(f"run {rid} diverged: {result['error']}", stacklevel=3)
    return result


#: kind -> its recipe: ``run(cfg, result, progress=...)`` fills the result envelope in place.
RECIPES = {"federated": federated_recipe.run, "prune": prune_recipe.run, "recycle": recycle_recipe.run,
           "segment": segment_recipe.run, "merge": merge_recipe.run,
           "mixture": mixture_recipe.run, "transfer": transfer_recipe.run}


def execute_scenario(cfg: RunConfig, rid: str, data: dict, path: Path, *, progress: bool = True) -> dict[str, Any]:
    """Run a scenario kind through its recipe, with a plain run's guarantees: the envelope is
    written whatever the outcome (ok, diverged, oom, error), and a crash is raised as ``RunFailed``
    after it is written. Input errors found by the recipe before it trains write nothing."""
    started = results.now()
    result = results.new_result(rid, cfg.resolved(), data=data, primary_metric=get_task(cfg.task).primary_metric,
                                env=environment(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
                                started_at=started, status="ok")
    result["plugins"] = plugins.records(cfg.plugins)
    error: BaseException | None = None
    try:
        RECIPES[cfg.kind](cfg, result, progress=progress)
    except INPUT_ERRORS:
        raise
    except Exception as e:
        (result["status"], result["error"]), error = crash(e), e
    result["finished_at"] = results.now()
    with trackers.open_run(cfg, rid) as tracker:  # the recorded curve, whatever the outcome
        tracker.log_record(result)
    return finish(path, result, error)


def measure_forgetting(model, base_text, status: str) -> dict | None:
    """The result's ``forgetting`` record (``lorabench.forgetting``); None when training crashed,
    or when measuring fails (with a warning: the run's result is written all the same)."""
    if status not in ("ok", "diverged"):
        return None
    try:
        return forgetting.measure_after(model, base_text)
    except (RuntimeError, ValueError) as e:  # CUDA out of memory is a RuntimeError
        warnings.warn(f"forgetting not measured: {type(e).__name__}: {e}", stacklevel=2)
        return None


def save_run_adapter(cfg: RunConfig, rid: str, model) -> int:
    """Save the trained adapter beside the result; its size on disk in bytes."""
    adapter_dir = Path(cfg.out) / f"run-{rid}-adapter"
    save_adapter(model, adapter_dir)
    return folder_bytes(adapter_dir)


def result_of(cfg: RunConfig, rid: str, data: dict, started: str, task, model, state: TrainState, train_loader,
              dev_loaders: dict, adapter_bytes: int | None) -> dict[str, Any]:
    """The result JSON of a run that trained (or crashed while training): ``results`` schema."""
    trainable, total = inject.count_parameters(model)
    device = torch.device(state.memory.get("device", "cuda" if torch.cuda.is_available() else "cpu"))
    result = results.new_result(rid, cfg.resolved(), data=data, primary_metric=task.primary_metric, started_at=started,
                                env={**environment(device), "precision": state.precision},
                                status=state.status, error=state.error)
    read = {split: getattr(getattr(loader, "dataset", None), "examples", None)
            for split, loader in {"train": train_loader, **dev_loaders}.items()}
    if all(exs is not None for exs in read.values()):  # (a test may hand fit plain lists of batches)
        result["data"]["examples"] = read_record(read)
    result.update({
        "pooling": getattr(model, "pooling", "cls"),
        "best": state.best,
        "final": state.final,
        "history": state.history,
        "train_loss": state.train_loss,
        "params": {"trainable": trainable, "total": total},
        "adapter_bytes": adapter_bytes,
        "time": {"train_s": 0.0, "eval_s": 0.0, "examples_per_s": 0.0, "tokens_per_s": 0.0, **state.time},
        "memory": {"device": device.type, "peak_allocated_bytes": None, "peak_reserved_bytes": None,
                   "peak_rss_bytes": None, "budget_bytes": cfg.budget_bytes(),
                   "micro_batch_size": cfg.batch_size // cfg.num_processes, "grad_accum_steps": cfg.grad_accum,
                   "oom_retries": 0, **state.memory},
        "distributed": state.distributed,
        "steps": {"done": state.step, "total": state.total_steps, "per_epoch": state.steps_per_epoch},
        "targets": inject.state_of(model).targets,
        "plugins": plugins.records(cfg.plugins),  # which code outside lorabench defined variants: module, file, sha256
        "paths": {"out": str(cfg.out), "data_dir": cfg.data_dir, "cwd": os.getcwd()},
        "finished_at": results.now(),
    })
    results.mark_metric(result)
    return result


# ---- the child entry point ----------------------------------------------------------------------
def execute_each(configs: list[RunConfig], line: Callable[[RunConfig, dict[str, Any]], str], *,
                 debug: bool = False) -> int:
    """The loop of the scenario front ends (``lorabench prune``, ``lorabench segment``): run ``configs``
    one after another and print ``line(cfg, result)`` and the result's path for each; a crash's
    result is written and the other runs go on. Returns how many did not end ``ok``."""
    if not debug:
        models.quiet_transformers()
    out = Path(configs[0].out)
    results.check_writable(out)
    failed = 0
    for cfg in configs:
        try:
            result = execute(cfg, progress=not cfg.quiet)
        except RunFailed as e:  # its result is written; the other runs go on
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        failed += result["status"] != "ok"
        print(f"{line(cfg, result)} ({results.result_path(out, result['run_id'])})")
    return failed


def main(argv: list[str] | None = None) -> int:
    """``python -m lorabench.run <config.yaml> <run id> [--parent PID] [--report FILE]``: one run
    process. Exit codes as ``lorabench train`` (0 ok, 1 failed, 2 bad input, 3 diverged, 130 Ctrl-C).

    A sweep's run process (``--parent``: the sweep's pid) dies with the sweep, leaves Ctrl-C to it
    and prints the traceback of a failure into its log. A rank process of a data-parallel run
    takes Ctrl-C from its launcher; ``--report`` writes ``{"code", "error"}`` for the launcher to
    report once for all ranks."""
    p = argparse.ArgumentParser(prog="python -m lorabench.run")
    p.add_argument("config")
    p.add_argument("run_id")
    p.add_argument("--parent", type=int, default=None)
    p.add_argument("--report", default=None)
    args = p.parse_args(argv)
    if args.parent is not None:
        die_with_parent(signal.SIGKILL, args.parent)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the sweep's to handle
    else:  # Ctrl-C handed on by the launcher, even when the process that started it ignores SIGINT
        signal.signal(signal.SIGINT, signal.default_int_handler)
    code, error = 0, None
    try:
        cfg = RunConfig.from_dict(load_yaml(args.config))
        rid = distributed.for_this_launch(cfg).run_id()
        if rid != args.run_id:
            raise ConfigError(f"{args.config} resolves to run id {rid}, the caller planned {args.run_id}: the data "
                              f"it reads ({cfg.data_dir or 'the default GLUE location'}) changed since the run was "
                              "planned, or the config does not round-trip through RunConfig.from_dict; plan it again")
        models.quiet_transformers()
        code = 0 if execute(cfg, progress=not cfg.quiet)["status"] == "ok" else 3
    except KeyboardInterrupt:
        code = 130
    except Exception as e:
        code = 2 if isinstance(e, INPUT_ERRORS) else 1
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        error = text if code == 2 else f"{type(e).__name__}: {text}"
        if args.parent is not None:  # into the sweep's log for this run
            traceback.print_exc()
            print(f"error: {error}", file=sys.stderr)
        if isinstance(e, RunFailed):
            error = None  # its result says why
    if args.report is not None:
        results.write_json_atomic(args.report, {"code": code, "error": error})
    return code


if __name__ == "__main__":
    raise SystemExit(main())
