"""``fit()``: one training loop, readable top to bottom (after accelerate's GLUE example).

AdamW over the variant's parameter groups, linear warmup + linear decay, gradient
clipping, gradient accumulation, evaluation every epoch (or every N steps), best-evaluation
selection on the task's primary metric (on ``val`` when the run holds one out, else on dev). One optimizer step consumes ``grad_accum``
loader batches; each loader batch is cut into micro-batches when a memory budget
demands it, with every micro-batch's loss weighted by its share of the step's examples,
so the update is the same whatever the micro-batch size. A CUDA out-of-memory error in a
step halves the micro-batch (same effective batch) and redoes the step, down to one example.

Data-parallel (``cfg.num_processes > 1``, under accelerate launch): every loader batch is split
across the ranks, the loss each step reports is the mean over the ranks, and the figures and a
checksum of each rank's adapter are combined at the end (``lorabench.distributed``).
"""

from __future__ import annotations

import itertools
import math
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device
from tqdm.auto import tqdm

from . import distributed, inject
from .divergence import check_after_training, divergence
from .precision import autocast, enable_grad_checkpointing, resolve_precision
from .config import RunConfig
from .trackers import NULL, RunTracker
from .data.batching import VAL_SPLIT
from .seeding import linear_warmup_decay, set_seed  # noqa: F401  (re-exported: train.set_seed)
from .step_batches import split_batch, step_groups
from .measure import (
    Stopwatch,
    Throughput,
    batch_size,
    budget_error,
    check_memory_budget,
    halve_micro_batch,
    peak_memory,
    plan_micro_batch,
    probe_fits,
    reset_peak_memory,
)

#: Training batches handed to ``lorabench.prepare`` (data-driven inits such as LoRA-GA).
PREPARE_BATCHES = 4


@dataclass
class TrainState:
    """Everything ``fit`` has recorded so far (kept when training raises)."""

    status: str = "ok"
    error: str | None = None
    step: int = 0
    total_steps: int = 0
    steps_per_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    train_loss: list[list[float]] = field(default_factory=list)
    best: dict | None = None
    final: dict | None = None
    time: dict[str, float] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"
    distributed: dict[str, Any] | None = None  #: ranks, backend, per-rank figures (num_processes > 1)

    def summary(self) -> dict[str, Any]:
        return dict(self.__dict__)


def make_optimizer(model, cfg: RunConfig) -> tuple[torch.optim.AdamW, list[torch.nn.Parameter]]:
    """AdamW over the variant's parameter groups (``inject.param_groups``), and the tensors it trains."""
    groups = inject.param_groups(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    trainable = [p for g in groups for p in g["params"]]
    if not trainable:
        raise RuntimeError(f"variant {cfg.variant!r} left nothing to train; check its options and targets")
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay), trainable


def make_schedule(optimizer, cfg: RunConfig, state: TrainState, batches_per_epoch: int):
    """Steps per epoch and in all (into ``state``), and the linear warmup + decay over them."""
    state.steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    if state.steps_per_epoch == 0:
        raise RuntimeError("the training set is empty; raise --train-limit or check the data folder")
    state.total_steps = max(1, math.ceil(round(cfg.epochs * state.steps_per_epoch, 6)))
    warmup = math.ceil(cfg.warmup_ratio * state.total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(warmup, state.total_steps))


def fit(model, train_loader, dev_loaders: dict, task, cfg: RunConfig, *, progress: bool = True,
        state: TrainState | None = None, tracker: RunTracker = NULL,
        before_step: Callable[[Any, int, int], None] | None = None) -> dict[str, Any]:
    """Train ``model`` (already adapted by ``lorabench.apply``) and evaluate it on ``dev_loaders``.

    ``before_step(model, step, total_steps)``, if given, runs at every optimizer step where
    ``inject.before_step`` does (clipped gradients in place, before ``optimizer.step()``; ``step``:
    the steps done so far): a scenario's own per-step work, e.g. LoRAPrune's importance and masks.

    Returns ``state.summary()``: history, best and final metrics, loss curve, timings,
    memory and step counts. Pass your own ``state`` to keep what was recorded if it raises.
    """
    state = state if state is not None else TrainState()
    set_seed(cfg.seed)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    state.precision = resolve_precision(cfg.precision, device)
    # Autocast is ours, not accelerate's (its precision is fixed once per process); fp16 needs
    # loss scaling, bf16 has fp32's exponent range and does not.
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(state.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=state.precision == "fp16")
    first = first_batches(train_loader)  # for prepare (and the DDP probe)
    accelerator = distributed.make_accelerator(model, first[0] if first else None, cuda, inject.extra_loss)
    budget = cfg.budget_bytes()
    check_memory_budget(model, budget, cfg.model)
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(model)

    # ---- optimizer, schedule, device placement -------------------------------------
    optimizer, trainable = make_optimizer(model, cfg)
    model, optimizer, train_loader, *dev = accelerator.prepare(model, optimizer, train_loader, *dev_loaders.values())
    dev_loaders = dict(zip(dev_loaders, dev))
    core = accelerator.unwrap_model(model)  # lorabench hooks need the model itself, not a DDP wrapper
    scheduler = make_schedule(optimizer, cfg, state, len(train_loader))

    train_clock, eval_clock, prep_clock = Stopwatch(cuda), Stopwatch(cuda), Stopwatch(cuda)
    seen = Throughput()
    reset_peak_memory(device)
    local_batch = cfg.batch_size // accelerator.num_processes  # examples per loader batch on this rank
    micro, accum = local_batch, cfg.grad_accum
    state.memory["oom_retries"] = 0
    bar = None
    try:
        # ---- data-driven init (the variant decides whether it does anything) ---------
        with prep_clock:  # every rank: the same unsplit batches (see lorabench.distributed)
            first = [send_to_device(b, accelerator.device) for b in first]
            if inject.is_prepared(core):  # run.load prepared it before a 4-bit quantization
                prep_clock.total += core.lorabench_prepare_s
            else:
                inject.prepare(core, first)
            if isinstance(model, torch.nn.parallel.DistributedDataParallel):
                distributed.broadcast_from_main(core)

        # ---- memory budget: the largest micro-batch that fits --------------------------
        if budget is not None and cuda:
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), device)
            plan = plan_micro_batch(local_batch, cfg.grad_accum,
                                    lambda m: probe_fits(model, first[0], m, cfg.max_length, accelerator, amp))
            if plan is None:
                raise budget_error(budget, cfg.model, "a probe step with one example ran out of CUDA memory")
            micro, accum = plan
        elif budget is not None:
            warnings.warn("memory_budget is recorded but not enforced on CPU", stacklevel=2)

        # ---- the loop -------------------------------------------------------------------
        shown = progress and not cfg.quiet and accelerator.is_main_process
        bar = tqdm(total=state.total_steps, disable=not shown, unit="step", desc=f"{cfg.variant} {cfg.task}",
                   dynamic_ncols=True)
        model.train()
        train_clock.start()
        since_log, since_eval = [], []  # step losses since the last log / evaluation
        evaluated_at = -1
        first_loss, last_group = None, None  # for the divergence checks

        def evaluate_now():
            nonlocal since_eval, evaluated_at
            _evaluate_and_record(model, dev_loaders, task, accelerator, amp, state, since_eval, train_clock,
                                 eval_clock)
            tracker.log_evaluation(state.history[-1])
            since_eval, evaluated_at = [], state.step

        while state.step < state.total_steps and state.status == "ok":  # one pass = one epoch
            for group in step_groups(train_loader, cfg.grad_accum):
                while (step_loss := _try_step(model, group, micro, accelerator, seen, amp, scaler)) is None:
                    smaller = halve_micro_batch(micro, local_batch, cfg.grad_accum)
                    if smaller is None or accelerator.num_processes > 1:  # a rank cannot redo a step alone:
                        raise torch.cuda.OutOfMemoryError(  # its peers wait in the gradient all-reduce
                            f"CUDA out of memory with a micro-batch of {micro} example(s)"
                            + ("" if smaller is None else f" on rank {accelerator.process_index}"))
                    optimizer.zero_grad(set_to_none=True)  # redo the whole step with smaller pieces
                    (micro, accum), state.memory["oom_retries"] = smaller, state.memory["oom_retries"] + 1
                    warnings.warn(f"CUDA out of memory at step {state.step + 1}; retrying with micro-batch {micro} "
                                  f"x {accum} per optimizer step", stacklevel=2)
                if accelerator.num_processes > 1:  # the mean over the ranks: they stop (diverge) together
                    step_loss = accelerator.reduce(torch.tensor(step_loss, device=accelerator.device), "mean").item()
                first_loss = step_loss if first_loss is None else first_loss
                why = divergence(step_loss, first_loss)
                if why is not None:  # stop before the bad update is applied
                    state.status = "diverged"
                    state.error = f"training loss {why} at step {state.step + 1}; lower the learning rate"
                    break
                last_group = group
                scaler.unscale_(optimizer)  # the true gradients for the clip and the rule (a no-op unless fp16)
                if cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
                # The optimisation rule adjusts the clipped gradients (LoRA-Pro, AltLoRA ...), as
                # the official optimizers do inside step(); AdaLoRA reads them, as PEFT does.
                inject.before_step(core)
                if before_step is not None:
                    before_step(core, state.step, state.total_steps)
                scaler.step(optimizer)  # skips the step on inf/NaN gradients under fp16
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                inject.on_step(core, state.step, state.total_steps)
                tracker.log_step(state.step, step_loss, cfg.lr, scheduler, seen.rates(train_clock.elapsed))

                since_log.append(step_loss)
                since_eval.append(step_loss)
                if state.step % cfg.log_every == 0:
                    state.train_loss.append([state.step, sum(since_log) / len(since_log)])
                    since_log = []
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}", ex_s=f"{seen.examples / max(train_clock.elapsed, 1e-9):.0f}")

                done = state.step >= state.total_steps
                if done or (cfg.eval_every and state.step % cfg.eval_every == 0):
                    evaluate_now()
                if done:
                    break
            else:  # the epoch ran to its end
                if not cfg.eval_every and evaluated_at != state.step:
                    evaluate_now()
        if since_log and state.status == "ok":
            state.train_loss.append([state.step, sum(since_log) / len(since_log)])
        if state.status == "ok" and last_group is not None:
            check_after_training(model, core, split_batch(last_group[0], micro)[0], first_loss, accelerator, amp, state,
                                 task)
    finally:
        if bar is not None:
            bar.close()  # now: on Ctrl-C its last refresh would come after the error line
        train_clock.stop()
        train_s = train_clock.total + prep_clock.total
        state.time.update(train_s=train_s, eval_s=eval_clock.total, prepare_s=prep_clock.total,
                          examples=seen.examples, tokens=seen.tokens, **seen.rates(train_clock.total))
        state.memory.update(peak_memory(device))
        state.memory.update(budget_bytes=budget, micro_batch_size=micro, grad_accum_steps=accum)
        if budget is not None and cuda:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
    if accelerator.num_processes > 1:  # every rank got here (the loop ends on the same step everywhere)
        mine = {"loop_s": train_clock.total, "prepare_s": prep_clock.total, "eval_s": eval_clock.total,
                "examples": seen.examples, "tokens": seen.tokens, **peak_memory(device)}
        ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
        trained = inject.adapter_tensors(core) if ddp else None
        time, memory, state.distributed = distributed.combine(accelerator, trained, mine)
        state.time.update(time)
        state.memory.update(memory)
    return state.summary()


def first_batches(loader) -> list:
    """The first ``PREPARE_BATCHES`` batches (for ``prepare``), the loader rewound afterwards so
    training still starts at its first batch."""
    batches = list(itertools.islice(loader, PREPARE_BATCHES))
    _rewind(loader)
    return batches


def _rewind(loader) -> None:
    """Back to the first epoch's order after ``loader`` was read ahead: a data-parallel shard of
    it never calls ``set_epoch`` on a seeded batch sampler (``data.ShuffledBatches``)."""
    sampler = getattr(loader, "batch_sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(0)


def _try_step(model, group, micro, accelerator, seen, amp, scaler) -> float | None:
    """``accumulate_gradients``, or None after a CUDA out-of-memory error (its memory freed:
    the error, which holds the step's activations, is gone when this returns)."""
    step_seen = Throughput()  # counted only once the step succeeds
    try:
        loss = accumulate_gradients(model, group, micro, accelerator, step_seen, amp, scaler)
        seen.absorb(step_seen)
        return loss
    except torch.cuda.OutOfMemoryError:
        pass
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return None


def accumulate_gradients(model, group: list[dict], micro: int, accelerator: Accelerator,
                         seen: Throughput | None = None, amp: torch.dtype | None = None,
                         scaler: torch.amp.GradScaler | None = None) -> float:
    """Backward over one optimizer step's batches, ``micro`` examples at a time; returns the
    step's mean loss. Each micro-batch's mean loss is weighted by its share of the step's
    examples, so the gradient is that of the mean over all of them, however they are cut."""
    n = sum(batch_size(b) for b in group)
    pieces = [m for b in group for m in split_batch(b, micro)]
    loss_sum = torch.zeros((), device=accelerator.device)
    for i, mb in enumerate(pieces):
        last = i == len(pieces) - 1
        with nullcontext() if last else accelerator.no_sync(model):  # DDP: all-reduce once per step
            with autocast(accelerator.device, amp):
                loss = model(**mb).loss + inject.extra_loss(model)  # a variant's own term (AdaLoRA); 0.0 for most
            weighted = loss * (batch_size(mb) / n)
            accelerator.backward(scaler.scale(weighted) if scaler is not None else weighted)
        loss_sum += loss.detach().float() * batch_size(mb)
        if seen is not None:
            seen.add(mb)
    return (loss_sum / n).item()


def _evaluate_and_record(model, loaders, task, accelerator, amp, state, losses, train_clock, eval_clock) -> None:
    train_clock.stop()
    with eval_clock:
        metrics = evaluate(model, loaders, task, accelerator, amp)
    record_evaluation(state, metrics, losses, train_clock.total, task)
    train_clock.start()


def record_evaluation(state: TrainState, metrics: dict, losses: list[float], train_s: float, task) -> None:
    """Add an evaluation to ``state.history``; it becomes ``final``, and ``best`` when its primary
    metric on the selection split (``score``) beats the best so far."""
    entry = {
        "step": state.step,
        "epoch": round(state.step / state.steps_per_epoch, 4),
        "train_loss": sum(losses) / len(losses) if losses else None,
        "metrics": metrics,
        "train_s": train_s,
    }
    state.history.append(entry)
    point = {"step": entry["step"], "epoch": entry["epoch"], "metrics": metrics}
    state.final = point
    if state.best is None or score(metrics, task) > score(state.best["metrics"], task):
        state.best = point


def score(metrics: dict, task) -> float:
    """The primary metric on the selection split: ``val`` when the run holds one out (``val_size``),
    else the first dev split (NaN counts as the worst)."""
    split = VAL_SPLIT if VAL_SPLIT in metrics else task.dev_splits[0]
    value = metrics[split].get(task.primary_metric) if split in metrics else None
    return value if value is not None and math.isfinite(value) else -math.inf


@torch.no_grad()
def evaluate(model, loaders: dict, task, accelerator: Accelerator,
             amp: torch.dtype | None = None) -> dict[str, dict[str, float]]:
    """Metrics of ``model`` on each dev split: {split: {metric: value}} (``training.evaluate``,
    gathered across the ranks of a data-parallel run)."""
    from .training.evaluate import evaluate as evaluate_on

    gather = None
    if accelerator.num_processes > 1:
        def gather(logits, gold):
            return accelerator.gather_for_metrics((logits, gold))
    return evaluate_on(model, loaders, task, accelerator.device, amp, gather=gather)
