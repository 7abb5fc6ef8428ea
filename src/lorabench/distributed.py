"""Data-parallel runs: where this process stands, and what the ranks must agree on.

A run with ``num_processes > 1`` is started by ``lorabench.launch`` (``lorabench train
--num-processes N``) or by ``accelerate launch -m lorabench train ...`` / torchrun; each rank
then runs ``run.execute`` with the environment they set (``RANK``, ``WORLD_SIZE`` ...).
Without CUDA the ranks run on CPU with the gloo backend.

What the ranks share (``train.fit`` calls these):

* the data: every loader batch is split across the ranks (accelerate's ``split_batches``),
  so the global batch and the data order are the single-process run's;
* the initialisation: DDP broadcasts rank 0's weights when it wraps the model, and a
  data-driven init (``prepare``: LoRA-GA ...) runs on every rank on the same unsplit batches,
  keeping every rank's RNG in step, then rank 0's result is broadcast, because SVD and GPU
  reductions are not bit-reproducible from one device to the next;
* the gradients: DDP all-reduces them once per optimizer step; it is told to look for unused
  parameters only when a probe step leaves a trainable parameter without a gradient (a frozen
  base is no concern: DDP ignores tensors that do not require grad, and DyLoRA's unused rank
  components are rows of parameters that do get a gradient);
* the result: rank 0 writes it, with figures combined over the ranks and a checksum of each
  rank's trained adapter (``distributed.in_sync``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import warnings
from typing import Any, Callable

import torch

from .errors import ConfigError
from .measure import combine_ranks


# ---- where this process stands --------------------------------------------------------------
def world_size() -> int:
    """Processes of the launch this process belongs to (``WORLD_SIZE``: accelerate, torchrun, ours)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def uses_fsdp() -> bool:
    """True under ``accelerate launch`` with an FSDP config (``configs/accelerate/fsdp.yaml``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


def for_this_launch(cfg: Any) -> Any:
    """``cfg`` with ``num_processes`` taken from the launcher when one started this process."""
    n = world_size()
    if n == 1 or cfg.num_processes == n:
        return cfg
    if cfg.num_processes != 1:
        raise ConfigError(f"num_processes is {cfg.num_processes} but the launcher started {n} processes; "
                          f"drop --num-processes under accelerate launch / torchrun, or set it to {n}")
    return dataclasses.replace(cfg, num_processes=n)


def needs_launch(cfg: Any) -> bool:
    """True when ``cfg`` asks for several processes and no launcher started this one."""
    return cfg.num_processes > 1 and world_size() == 1


# ---- what the ranks agree on (train.fit) ------------------------------------------------------
def make_accelerator(model: torch.nn.Module, sample: dict | None, cuda: bool,
                     extra_loss: Callable = lambda model: 0.0):
    """accelerate's Accelerator for ``fit``: every loader batch split across the processes (the
    global batch stays ``batch_size``), and DDP told to look for unused parameters only when a
    probe step on ``sample`` finds some (the search costs a graph traversal every step)."""
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs, PartialState
    from accelerate.utils import send_to_device

    handlers = []
    if world_size() > 1 and sample is not None and not uses_fsdp():  # FSDP has no DDP reducer to tell
        device = PartialState(cpu=not cuda).device
        model.to(device)
        probe = {k: v[:2] if torch.is_tensor(v) else v for k, v in sample.items()}  # two examples are enough
        unused = unused_parameters(model, send_to_device(probe, device), extra_loss)
        handlers.append(DistributedDataParallelKwargs(find_unused_parameters=bool(unused)))
    return Accelerator(cpu=not cuda, dataloader_config=DataLoaderConfiguration(split_batches=True),
                       kwargs_handlers=handlers)


def unused_parameters(model: torch.nn.Module, batch: dict, extra_loss: Callable = lambda model: 0.0) -> list[str]:
    """Trainable parameters that one forward/backward on ``batch`` (train mode, ``extra_loss(model)``
    added: the variant's regulariser) leaves without a gradient. Gradients, buffers, RNG and mode
    are restored."""
    cuda = torch.cuda.is_available()
    rng = torch.get_rng_state(), torch.cuda.get_rng_state_all() if cuda else None
    buffers = [b.detach().clone() for b in model.buffers()]
    training = model.training
    model.train()
    try:
        with warnings.catch_warnings():  # e.g. LoRA-GA's "training before prepare": this is no training
            warnings.simplefilter("ignore")
            (model(**batch).loss + extra_loss(model)).backward()
        return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    finally:
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)
        torch.set_rng_state(rng[0])
        if cuda:
            torch.cuda.set_rng_state_all(rng[1])
        model.train(training)


@torch.no_grad()
def broadcast_from_main(model: torch.nn.Module) -> None:
    """Every floating-point parameter and buffer of ``model`` set to rank 0's (DDP only: under
    FSDP a rank holds a shard, not the tensor)."""
    import torch.distributed as dist

    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            dist.broadcast(t.data, src=0)


def checksum(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 (16 hex digits) of named tensors (the trained adapter's): names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, t in sorted(tensors.items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def combine(accelerator, trained: dict[str, torch.Tensor] | None, figures: dict[str, Any]) -> tuple[dict, dict, dict]:
    """(time, memory, distributed) of the run from every rank's ``figures`` (``measure.combine_ranks``),
    each rank adding the checksum of its ``trained`` tensors (the adapter; None under FSDP, where a
    rank holds only a shard: ``in_sync`` is then None). A collective: every rank must call it."""
    compare = trained is not None
    from accelerate.utils import gather_object

    mine = {"rank": accelerator.process_index, **figures,
            "adapter_sha256": checksum(trained) if compare else None}
    ranks = sorted(gather_object([mine]), key=lambda r: r["rank"])
    time, memory = combine_ranks(ranks)
    sums = {r["adapter_sha256"] for r in ranks}
    handler = accelerator.ddp_handler
    info = {"num_processes": accelerator.num_processes, "backend": accelerator.state.backend,
            "distributed_type": str(accelerator.distributed_type.value),
            "find_unused_parameters": bool(handler.find_unused_parameters) if handler is not None else False,
            "in_sync": len(sums) == 1 if compare else None, "ranks": ranks}
    if len(sums) > 1:
        warnings.warn(f"the trained adapter differs between ranks (checksums {sorted(sums)}); the ranks did "
                      "not stay in step: please report this with the run's config", stacklevel=2)
    return time, memory, info
