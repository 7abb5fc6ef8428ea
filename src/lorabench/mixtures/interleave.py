"""Batches of several tasks in one seeded stream; every batch comes from one task.

    proportional (default): each epoch is every batch of every task exactly once, in a seeded
        random order of tasks -- task t gets n_t / sum_j n_j of the steps, exactly.
    temperature T: each of the sum_j n_j steps of an epoch draws its task with
        p_t = n_t^(1/T) / sum_j n_j^(1/T) (T = 1: proportional in expectation; large T: uniform),
        each task's loader restarting when it runs out (Arivazhagan et al. 2019, arXiv 1907.05019).

Epoch e's order comes from a generator seeded with (seed, e), so a run is bit-for-bit repeatable.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from ..errors import ConfigError

SAMPLINGS = ("proportional", "temperature")


class Interleaved:
    def __init__(self, loaders: dict[str, Iterable], sampling: str = "proportional", temperature: float = 2.0,
                 seed: int = 0):
        if sampling not in SAMPLINGS:
            raise ConfigError(f"unknown sampling {sampling!r}; choose one of: {', '.join(SAMPLINGS)}")
        if sampling == "temperature" and not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature!r}; e.g. --temperature 2")
        self.loaders = dict(loaders)
        self.sampling, self.temperature, self.seed = sampling, temperature, seed
        self.sizes = {t: len(dl) for t, dl in self.loaders.items()}  # batches per epoch
        self.epoch = 0

    def __len__(self) -> int:
        return sum(self.sizes.values())

    def probabilities(self) -> dict[str, float]:
        """The chance that a step is task t's."""
        power = 1.0 if self.sampling == "proportional" else 1.0 / self.temperature
        w = {t: n ** power for t, n in self.sizes.items()}
        total = sum(w.values())
        return {t: v / total for t, v in w.items()}

    def schedule(self, epoch: int) -> list[str]:
        """The task of each step of ``epoch``."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        tasks = list(self.sizes)
        if self.sampling == "proportional":
            steps = [t for t in tasks for _ in range(self.sizes[t])]
            return [steps[i] for i in torch.randperm(len(steps), generator=g).tolist()]
        p = torch.tensor([self.probabilities()[t] for t in tasks], dtype=torch.float64)
        return [tasks[i] for i in torch.multinomial(p, len(self), replacement=True, generator=g).tolist()]

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        order = self.schedule(self.epoch)
        self.epoch += 1
        streams = {t: iter(dl) for t, dl in self.loaders.items()}
        for task in order:
            try:
                batch = next(streams[task])
            except StopIteration:  # temperature sampling: this task's loader starts over
                streams[task] = iter(self.loaders[task])
                batch = next(streams[task])
            yield task, batch
