"""What a training run cost: its training time (evaluation excluded), evaluation time, examples and
tokens per second, and peak memory, measured the same way in every loop.

Training time stops while the loop evaluates (``with meter.evaluating():``) so examples per second
are those of training alone, as ``train.fit`` reports them. Peak CUDA memory is reset when the
meter is made; on CPU the peak RSS covers the whole process (``measure.peak_memory``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..measure import Stopwatch, Throughput, peak_memory, reset_peak_memory


class Meter:
    """``start()`` / ``stop()`` (or ``with meter:``) around training, ``count(batch)`` per training
    batch, ``with meter.evaluating():`` around each evaluation; then ``time()`` and ``memory()``."""

    def __init__(self, device: torch.device):
        self.device = device
        cuda = device.type == "cuda"
        self.train, self.eval = Stopwatch(cuda), Stopwatch(cuda)
        self.seen = Throughput()
        self.running = False
        reset_peak_memory(device)

    def start(self) -> Meter:
        self.running = True
        self.train.start()
        return self

    def stop(self) -> None:
        self.running = False
        self.train.stop()

    def __enter__(self) -> Meter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def count(self, batch: dict[str, Any]) -> None:
        """One training batch: its examples and real (non-padding) tokens."""
        if "input_ids" in batch:
            self.seen.add(batch)

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """The training clock pauses (if it runs) while the evaluation clock runs."""
        running = self.running
        if running:
            self.stop()
        try:
            with self.eval:
                yield
        finally:
            if running:
                self.start()

    def time(self) -> dict[str, float]:
        """{train_s (evaluation excluded), eval_s, examples, tokens, examples_per_s, tokens_per_s}."""
        train_s = self.train.elapsed
        return {"train_s": train_s, "eval_s": self.eval.elapsed, "examples": self.seen.examples,
                "tokens": self.seen.tokens, **self.seen.rates(train_s)}

    def memory(self) -> dict[str, Any]:
        """``measure.peak_memory``: device, peak CUDA allocated/reserved bytes (None on CPU), peak RSS."""
        return peak_memory(self.device)
