"""Successive halving over each method's grid, with seeds as the resource (``halving: ETA``).

Successive halving (Jamieson & Talwalkar 2016, "Non-stochastic best arm identification and
hyperparameter optimization"; the rung rule of Hyperband, Li et al. 2018, and of ASHA, Li et al.
2020) starts every configuration on a small budget and gives the next budget to the best ``1/eta``.
Here the budget of a configuration is its number of seeds, so a run is never cut short and every
finished run is a whole run like any other:

- rung 0: every configuration of a (model, task, method) -- its learning-rate grid, and any other
  grid axis of the block -- runs the sweep's first seed;
- after rung k, the configurations ranked by the mean over seeds 0..k of their metric on the
  selection split (``val`` when the runs hold one out, else dev; a failed or diverged run ranks
  last) keep the best ``ceil(n / eta)`` (at least one), which run the next seed;
- the survivor of the last halving runs every remaining seed, so the configuration the report
  selects (``selection.select_best``: the most seeds, then the best mean) has all of them.

With 4 learning rates, 3 seeds and eta 2: 4 + 2 + 1 = 7 runs per method instead of 12, 2.3x a
single-lr sweep (3). Ray Tune's and Optuna's ASHA schedulers stop trials at intermediate training
steps; a lorabench run is one process with a linear-decay schedule fixed by its length, so stopping
early would change the run rather than measure less of it, and seeds are the resource instead.

Which runs are due is a pure function of the results on disk (``active``): a sweep stopped
mid-rung resumes where it was, and a rerun with the same results prunes the same runs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable

from .. import results
from .plan import PlannedRun, Sweep

FAILED = -math.inf


def _groups(sweep: Sweep) -> tuple[list[Any], dict[tuple, dict[str, dict[Any, PlannedRun]]]]:
    """(seeds in plan order, {(model, task, method): {configuration key: {seed: run}}}); the method is
    the variant, or a scenario's label (two federated aggregations are two methods)."""
    seeds: list[Any] = []
    groups: dict[tuple, dict[str, dict[Any, PlannedRun]]] = {}
    for run in sweep.runs:
        c = run.config
        if c.seed not in seeds:
            seeds.append(c.seed)
        config = results.canonical({k: v for k, v in c.resolved().items() if k != "seed"})
        groups.setdefault((c.model, c.task, c.method()), {}).setdefault(config, {})[c.seed] = run
    return seeds, groups


def _score(out: Path, runs: list[PlannedRun]) -> float | None:
    """Mean selection metric of a configuration's runs so far; None while one has no result."""
    values = []
    for run in runs:
        result = results.read_result(results.result_path(out, run.run_id))
        if result is None:
            return None
        value = results.metric_of(result, select=True)[0] if result.get("status") == "ok" else None
        values.append(FAILED if value is None else value)
    return sum(values) / len(values)


def rung_sizes(n: int, seeds: int, eta: int) -> list[int]:
    """Configurations that run each seed: n, ceil(n/eta), ... down to 1, then 1 for the rest."""
    sizes = [n]
    while len(sizes) < seeds:
        sizes.append(max(1, math.ceil(sizes[-1] / eta)))
    return sizes


def active(sweep: Sweep, out: Path | None = None) -> tuple[list[PlannedRun], dict[str, str]]:
    """(the runs due so far, in plan order: done, or to run now; {pruned run id: why})."""
    out = Path(out or sweep.out)
    seeds, groups = _groups(sweep)
    due: set[str] = set()
    pruned: dict[str, str] = {}
    for configs in groups.values():
        alive = list(configs)
        for k, seed in enumerate(seeds):
            rung = [configs[c][seed] for c in alive if seed in configs[c]]
            due |= {r.run_id for r in rung}
            if k + 1 == len(seeds) or len(alive) == 1:
                if len(alive) == 1:  # the survivor runs every remaining seed
                    due |= {r.run_id for s, r in configs[alive[0]].items() if s in seeds[k + 1:]}
                break
            scores = {c: _score(out, [configs[c][s] for s in seeds[:k + 1] if s in configs[c]]) for c in alive}
            if any(v is None for v in scores.values()):
                break  # this rung is still running
            keep = max(1, math.ceil(len(alive) / sweep.halving))
            ranked = sorted(alive, key=lambda c: -scores[c])  # stable: plan order breaks ties
            for c in ranked[keep:]:
                for s in seeds[k + 1:]:
                    if s in configs[c]:
                        pruned[configs[c][s].run_id] = f"pruned by successive halving after seed {seed}"
            alive = ranked[:keep]
    return [r for r in sweep.runs if r.run_id in due], pruned


def run_halving(sweep: Sweep, runner: Callable[..., dict[str, str | None]], *, retry_failed: bool = False,
                quiet: bool = False) -> dict[str, str | None]:
    """Run ``sweep`` rung by rung with ``runner`` (a backend's ``run_sweep``): the due runs, then
    the ones their results make due, until nothing new is; returns run id -> status, "pruned" for
    the runs halving never started (the caller writes them into ``sweep.json``). ``retry_failed``
    applies to the first pass (the resume)."""
    done: set[str] = set()
    statuses: dict[str, str | None] = {}
    while True:
        runs, pruned = active(sweep)
        if done and {r.run_id for r in runs} <= done:
            break
        statuses.update(runner(dataclasses.replace(sweep, runs=runs), retry_failed=retry_failed and not done,
                               quiet=quiet))
        done |= {r.run_id for r in runs}
    statuses.update({rid: "pruned" for rid in pruned})
    return {r.run_id: statuses.get(r.run_id) for r in sweep.runs}


def planned_cost(sweep: Sweep) -> tuple[int, int]:
    """(runs halving starts at most, runs of a single-configuration sweep: one per group and seed)."""
    seeds, groups = _groups(sweep)
    most = sum(sum(rung_sizes(len(configs), len(seeds), sweep.halving)) for configs in groups.values())
    return most, len(groups) * len(seeds)


def stale_note(sweep: Sweep, pruned: Iterable[str] | None = None) -> str | None:
    """A note naming the finished results in ``sweep.out`` that the rung rule now prunes: their
    configuration was kept under an earlier grid or earlier results (a grid point added since ranked
    above it). ``lorabench report`` reads every result in a folder, so they would still take part
    in selection; None when there are none, and without halving. ``pruned``: the pruned run ids
    when the caller has them (``active``'s second value), else computed here."""
    if not sweep.halving:
        return None
    out = Path(sweep.out)
    pruned = active(sweep, out)[1] if pruned is None else pruned
    stale = sorted(rid for rid in pruned if results.status_of(results.result_path(out, rid)) is not None)
    if not stale:
        return None
    return (f"note: {out} holds {len(stale)} finished runs that successive halving now prunes "
            f"({', '.join(f'run-{r}.json' for r in stale)}); lorabench report reads every result in the folder, so "
            "they would take part in selection: move them out of it before reporting this sweep")
