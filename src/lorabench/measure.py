"""What a run costs and where it ran: timers, peak memory, throughput, environment.

The memory-budget helpers live here too: the up-front check that weights, gradients and
optimizer state fit, and the planner that picks the largest micro-batch that fits.

Peak CPU memory is the process's peak resident set size (``getrusage``): it cannot be
reset, so it covers everything the process did before (model loading included). CUDA
peaks are reset when training starts and so cover training and evaluation only.
"""

from __future__ import annotations

import math
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ._version import __version__
from .errors import MemoryBudgetError
from .units import format_bytes, parse_bytes  # noqa: F401  (measure.parse_bytes: older callers)

class Stopwatch:
    """Accumulates wall time over start/stop intervals (waits for CUDA work on stop)."""

    def __init__(self, cuda: bool = False):
        self.cuda = cuda
        self.total = 0.0
        self._since: float | None = None

    def start(self) -> "Stopwatch":
        if self._since is None:
            self._since = time.perf_counter()
        return self

    def stop(self) -> float:
        if self._since is not None:
            if self.cuda:
                torch.cuda.synchronize()
            self.total += time.perf_counter() - self._since
            self._since = None
        return self.total

    @property
    def elapsed(self) -> float:
        running = time.perf_counter() - self._since if self._since is not None else 0.0
        return self.total + running

    def __enter__(self) -> "Stopwatch":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Throughput:
    """Counts training examples and real (non-padding) tokens."""

    def __init__(self):
        self.examples = 0
        self._tokens: torch.Tensor | int = 0

    def add(self, batch: dict[str, Any]) -> None:
        self.examples += batch_size(batch)
        mask = batch.get("attention_mask")
        # Summed on the device without a sync; read once at the end.
        self._tokens = self._tokens + (mask.sum() if mask is not None else batch["input_ids"].numel())

    def absorb(self, other: "Throughput") -> None:
        self.examples += other.examples
        self._tokens = self._tokens + other._tokens

    @property
    def tokens(self) -> int:
        return int(self._tokens)

    def rates(self, seconds: float) -> dict[str, float]:
        s = max(seconds, 1e-9)
        return {"examples_per_s": self.examples / s, "tokens_per_s": self.tokens / s}


def batch_size(batch: dict[str, Any]) -> int:
    return int(batch["input_ids"].shape[0])


# ---- memory ------------------------------------------------------------------------------
def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB


def peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak CUDA allocated/reserved bytes since the last reset (None on CPU) and peak RSS."""
    cuda = device.type == "cuda"
    return {
        "device": device.type,
        "peak_allocated_bytes": int(torch.cuda.max_memory_allocated(device)) if cuda else None,
        "peak_reserved_bytes": int(torch.cuda.max_memory_reserved(device)) if cuda else None,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


# ---- environment -------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def git_revision(path: str | Path | None = None) -> str | None:
    """HEAD of the git checkout holding ``path`` (default: this package), with "-dirty"
    when tracked files differ from it; None when it is not a git checkout."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=where, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return rev.stdout.strip() + ("-dirty" if dirty.returncode == 1 else "")


def package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """Where and with what a run ran (the result's ``env``)."""
    return {
        "device_name": device_name(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": package_version("transformers"),
        "accelerate": package_version("accelerate"),
        "lorabench": __version__,
        "git_rev": git_revision(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
    }


# ---- memory budget -----------------------------------------------------------------------
def micro_batch_candidates(batch_size: int) -> list[int]:
    """``batch_size``, then the powers of two below it: 24 -> [24, 16, 8, 4, 2, 1]."""
    out = [batch_size]
    p = 1 << (batch_size.bit_length() - 1)
    if p == batch_size:
        p //= 2
    while p >= 1:
        out.append(p)
        p //= 2
    return out


def plan_micro_batch(batch_size: int, grad_accum: int, fits: Callable[[int], bool]) -> tuple[int, int] | None:
    """The largest micro-batch for which ``fits(micro)`` holds, and the micro-batches per
    optimizer step that keep the effective batch at ``batch_size * grad_accum``.

    None when not even a micro-batch of 1 fits. ``fits`` is asked largest first and no
    more once it says yes, so a probe that really runs the model runs as little as possible.
    """
    for micro in micro_batch_candidates(batch_size):
        if fits(micro):
            return micro, grad_accum * math.ceil(batch_size / micro)
    return None


def halve_micro_batch(micro: int, batch_size: int, grad_accum: int) -> tuple[int, int] | None:
    """After a CUDA out-of-memory error: half the micro-batch and the micro-batches per optimizer
    step that keep the effective batch at ``batch_size * grad_accum``; None when it is already 1.

    ``batch_size`` is the examples per loader batch on this process: 32 x 1 -> (16, 2) -> (8, 4).
    """
    if micro <= 1:
        return None
    micro //= 2
    return micro, grad_accum * math.ceil(batch_size / micro)


def combine_ranks(ranks: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(time, memory) of a data-parallel run from each rank's own figures.

    Each rank gives ``examples``, ``tokens``, ``loop_s`` (training loop, evaluation excluded),
    ``prepare_s``, ``eval_s`` and its peaks (``peak_allocated_bytes``, ``peak_reserved_bytes``,
    ``peak_rss_bytes``). Examples and tokens are summed over the ranks; a time is the slowest
    rank's (the run waits for it); rates are the sums over the slowest loop; a peak is the
    largest rank's (the memory one device must hold).
    """
    def most(key: str):
        values = [r[key] for r in ranks if r.get(key) is not None]
        return max(values) if values else None

    examples, tokens = sum(r["examples"] for r in ranks), sum(r["tokens"] for r in ranks)
    loop_s = max(max(r["loop_s"] for r in ranks), 1e-9)
    time = {"train_s": max(r["loop_s"] + r["prepare_s"] for r in ranks), "eval_s": most("eval_s"),
            "prepare_s": most("prepare_s"), "examples": examples, "tokens": tokens,
            "examples_per_s": examples / loop_s, "tokens_per_s": tokens / loop_s}
    memory = {key: most(key) for key in ("peak_allocated_bytes", "peak_reserved_bytes", "peak_rss_bytes")}
    return time, memory


def budget_error(budget: int, model_name: str, why: str) -> MemoryBudgetError:
    return MemoryBudgetError(
        f"memory budget {format_bytes(budget)} is too small for batch size 1 with model {model_name} ({why}); "
        "raise --memory-budget or use --quantize/--grad-checkpointing"
    )


def min_training_bytes(model: torch.nn.Module) -> int:
    """Weights + gradients + AdamW's two moments: the floor of any training step."""
    params = {id(p): p for p in model.parameters()}.values()
    trainable = [p for p in params if p.requires_grad]
    return tensor_bytes(params) + 3 * tensor_bytes(trainable)


def check_memory_budget(model: torch.nn.Module, budget: int | None, model_name: str) -> None:
    """Reject, before any compute, a budget below the weights + gradients + optimizer state."""
    if budget is None:
        return
    need = min_training_bytes(model)
    if budget < need:
        raise budget_error(budget, model_name, f"weights, gradients and optimizer state alone need {format_bytes(need)}")


def probe_fits(model, sample: dict, micro: int, max_length: int, accelerator, amp: torch.dtype | None = None) -> bool:
    """Run two forward/backward passes on a worst-case batch (``micro`` rows of
    ``max_length`` real tokens) while holding memory for AdamW's moments; False on CUDA OOM.

    Gradients are cleared and the RNG restored afterwards, so probing changes nothing.
    """
    cuda = torch.cuda.is_available()
    rng = torch.get_rng_state(), torch.cuda.get_rng_state_all() if cuda else None
    trainable = [p for p in model.parameters() if p.requires_grad]
    ballast = None
    try:
        ballast = [torch.empty(2 * p.numel(), dtype=p.dtype, device=p.device) for p in trainable]
        batch = _worst_case_batch(sample, micro, max_length)
        for _ in range(2):
            with torch.autocast(accelerator.device.type, dtype=amp, enabled=amp is not None):
                loss = model(**batch).loss
            accelerator.backward(loss)
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        del ballast
        model.zero_grad(set_to_none=True)
        torch.set_rng_state(rng[0])
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.set_rng_state_all(rng[1])


def _worst_case_batch(sample: dict, rows: int, length: int) -> dict:
    """``rows`` examples of ``length`` tokens built by repeating a real batch (valid ids, labels)."""
    out = {}
    for key, value in sample.items():
        if not torch.is_tensor(value):
            out[key] = value
            continue
        value = value[torch.arange(rows, device=value.device) % value.shape[0]]
        if value.ndim == 2:  # (B, T) -> (rows, length)
            value = value.repeat(1, math.ceil(length / value.shape[1]))[:, :length]
        out[key] = value
    if "attention_mask" in out:
        out["attention_mask"] = torch.ones_like(out["attention_mask"])
    return out
