"""``fit_pack``: ``train.fit`` for K runs at once over one frozen base, step by step in lockstep.

Per run, as ``fit`` does it alone: its own data order (its loader, its seed), optimizer over its
own parameter groups (the variant's rule: LoRA+ ratios, LoRA-FA's frozen A ...), linear warmup +
decay schedule, gradient clipping over its own tensors, the rule's ``before_step``/``on_step``,
gradient accumulation, evaluation every epoch (or every N steps), best-dev selection, the
divergence checks before every step and after the last. Shared: the forward and backward of the
packed micro-batches, in chunks of rows of similar length (``model.chunks``; the backward of the
sum of the runs' weighted losses: the runs' tensors are disjoint, so each gets exactly its own
gradient), and evaluation passes in which every run due for one reads the same dev batch.

A run leaves the pack when it finishes or diverges (``on_finish`` is called at once, so its
result is written while the others train on). Not supported in a pack, so such runs train alone
(``lorabench.pack.plan``): several processes, a memory budget (its micro-batch planner and the
out-of-memory retry are per process), fp16 loss scaling, gradient checkpointing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from accelerate.utils import send_to_device

from .. import distributed, inject
from ..divergence import check_after_training, divergence
from ..measure import Stopwatch, Throughput, peak_memory, reset_peak_memory
from ..precision import resolve_precision
from ..train import (TrainState, first_batches, make_optimizer, make_schedule, record_evaluation, set_seed,
                     split_batch, step_groups)
from .model import PackedModel, RunView, evaluate_pack


@dataclass
class Member:
    """One run of a pack and everything ``fit`` would keep for it."""

    index: int
    cfg: Any
    model: torch.nn.Module  # the run's own model object (its adapters and head; frozen tensors shared)
    train_loader: Any
    dev_loaders: dict
    state: TrainState = field(default_factory=TrainState)
    optimizer: Any = None
    scheduler: Any = None
    trainable: list = field(default_factory=list)
    groups: Iterator | None = None
    first_loss: float | None = None
    last_group: list | None = None
    since_log: list = field(default_factory=list)
    since_eval: list = field(default_factory=list)
    evaluated_at: int = -1
    seen: Throughput = field(default_factory=Throughput)
    train_s: float = 0.0  # its share of the pack's training wall time: each step's time / runs in it
    eval_s: float = 0.0  # its share of the evaluation passes it took part in
    active: bool = True

    def next_group(self) -> list | None:
        """The next optimizer step's batches, None at the end of an epoch."""
        if self.groups is None:
            self.groups = step_groups(self.train_loader, self.cfg.grad_accum)
        group = next(self.groups, None)
        if group is None:
            self.groups = None
        return group


def _setup(m: Member, accelerator, generator: torch.Generator) -> None:
    """The run's optimizer, loaders and schedule, as ``train.fit`` makes them. Its loaders draw
    from ``generator`` (its own, ``pack.noise``) what they draw alone from the global one, and the
    first batches are read ahead as ``fit`` reads them for ``prepare``."""
    for loader in (m.train_loader, *m.dev_loaders.values()):
        loader.generator = generator
    first_batches(m.train_loader)
    m.optimizer, m.trainable = make_optimizer(m.model, m.cfg)
    m.train_loader, *dev = accelerator.prepare(m.train_loader, *m.dev_loaders.values())
    m.dev_loaders = dict(zip(m.dev_loaders, dev))
    m.scheduler = make_schedule(m.optimizer, m.cfg, m.state, len(m.train_loader))
    m.state.memory["oom_retries"] = 0


def fit_pack(packed: PackedModel, members: list[Member], task, *, on_finish: Callable[[Member], None],
             progress: Callable[[int, int], None] | None = None) -> float:
    """Train every member to its end (or divergence) in lockstep; returns the pack's training wall time.
    ``progress(done, total)``: after every step, the optimizer steps taken and planned over all members
    (a run that leaves early counts as done)."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    cfg0 = members[0].cfg
    set_seed(cfg0.seed)
    precision = resolve_precision(cfg0.precision, device)
    amp = {"bf16": torch.bfloat16}.get(precision)
    accelerator = distributed.make_accelerator(packed, None, cuda)
    packed.to(accelerator.device)
    for m in members:
        m.state.precision = precision
        _setup(m, accelerator, packed.pack.noise.generators[m.index])
    clock = Stopwatch(cuda)
    reset_peak_memory(device)
    packed.train()
    clock.start()

    def evaluate(due: list[Member]) -> None:
        clock.stop()
        with Stopwatch(cuda) as watch:
            metrics = evaluate_pack(packed, [m.index for m in due], [m.dev_loaders for m in due], task, device, amp)
        for m, got in zip(due, metrics):
            record_evaluation(m.state, got, m.since_eval, clock.total, task)
            m.since_eval, m.evaluated_at = [], m.state.step
            m.eval_s += watch.total / len(due)  # its share of the pass
        clock.start()

    def finish(m: Member) -> None:
        m.active = False
        s = m.state
        if m.since_log and s.status == "ok":
            s.train_loss.append([s.step, sum(m.since_log) / len(m.since_log)])
        if s.status == "ok" and m.last_group is not None:
            clock.stop()
            view = RunView(packed, m.index)
            check_after_training(view, m.model, split_batch(m.last_group[0], m.cfg.batch_size)[0], m.first_loss,
                                 accelerator, amp, s, task)
            clock.start()
        s.time.update(train_s=m.train_s, eval_s=m.eval_s, examples=m.seen.examples, tokens=m.seen.tokens,
                      pack_wall_s=clock.elapsed, **m.seen.rates(m.train_s))
        s.memory.update(peak_memory(device))
        s.memory.update(budget_bytes=None, micro_batch_size=m.cfg.batch_size, grad_accum_steps=m.cfg.grad_accum)
        on_finish(m)

    while any(m.active for m in members):
        # ---- each run's batches for this step (an epoch's end: its evaluation, then the next epoch)
        step: dict[int, list] = {}
        for m in [m for m in members if m.active]:
            group = m.next_group()
            if group is None:
                if not m.cfg.eval_every and m.evaluated_at != m.state.step:
                    evaluate([m])
                group = m.next_group()
            step[m.index] = [send_to_device(b, accelerator.device) for b in group]
        taking = [m for m in members if m.index in step]
        started = clock.elapsed
        # ---- one forward + backward of the packed batch per micro-batch index
        sums = {m.index: 0.0 for m in taking}
        counts = {m.index: sum(len(b["input_ids"]) for b in step[m.index]) for m in taking}
        for j in range(max(len(g) for g in step.values())):
            part = [m for m in taking if j < len(step[m.index])]
            batches = [step[m.index][j] for m in part]
            weights = [len(b["input_ids"]) / counts[m.index] for m, b in zip(part, batches)]  # share of its step
            means = packed.backward([m.index for m in part], batches, weights, amp)
            for m, mean, b in zip(part, means, batches):
                sums[m.index] += mean * len(b["input_ids"])
                m.seen.add(b)
        # ---- each run's own optimizer step, checks, logging and evaluation
        due = []
        for m in taking:
            s, cfg = m.state, m.cfg
            step_loss = sums[m.index] / counts[m.index]
            m.first_loss = step_loss if m.first_loss is None else m.first_loss
            why = divergence(step_loss, m.first_loss)
            if why is not None:  # before the bad update is applied
                s.status, s.error = "diverged", f"training loss {why} at step {s.step + 1}; lower the learning rate"
                m.optimizer.zero_grad(set_to_none=True)
                finish(m)
                continue
            m.last_group = step[m.index]
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(m.trainable, cfg.max_grad_norm)
            inject.before_step(m.model)
            m.optimizer.step()
            m.scheduler.step()
            m.optimizer.zero_grad(set_to_none=True)
            s.step += 1
            inject.on_step(m.model, s.step, s.total_steps)
            m.since_log.append(step_loss)
            m.since_eval.append(step_loss)
            if s.step % cfg.log_every == 0:
                s.train_loss.append([s.step, sum(m.since_log) / len(m.since_log)])
                m.since_log = []
            done = s.step >= s.total_steps
            if done or (cfg.eval_every and s.step % cfg.eval_every == 0):
                due.append(m)
        for m in taking:
            m.train_s += (clock.elapsed - started) / len(taking)
        if due:
            evaluate(due)
        for m in due:
            if m.state.step >= m.state.total_steps:
                finish(m)
        if progress is not None:
            progress(sum(m.state.step if m.active else m.state.total_steps for m in members),
                     sum(m.state.total_steps for m in members))
    clock.stop()
    return clock.total
