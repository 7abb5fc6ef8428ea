"""Learning-rate grids that find their interior (``extend_grid: N`` in a sweep file).

A grid guessed for one task does not carry over to the next: when a method's best learning rate
(on the selection split) sits at an edge of its grid, its best may lie outside, and a table built
from that grid ranks methods by how well their grids were guessed. So, on the sweep's first seed,
after every learning rate of a (model, task, method, other grid axes) group has a result:

- a best (the selection metric; a failed or diverged run ranks last; ties included, as a few
  hundred val examples tie often) at the lowest or highest learning rate adds one more point one
  grid step further out (the grid's own geometric step,
  x2 for a grid of one point), for every seed of the sweep;
- this repeats until the best is interior, or the group has ``N`` points beyond its grid on that
  side: the bound, which ``--dry-run`` states as at most ``2 N`` extra configurations per group;
- only then do successive halving (``halving:``) and the other seeds go on, over the extended grid.

Which points exist is a pure function of the results on disk (``extensions``), so a sweep stopped
mid-way resumes to the same grid, and the report's edge note says where a bound left the best at
an edge.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable

from .. import results
from .plan import PlannedRun, Sweep

FAILED = -math.inf


def _group_key(run: PlannedRun) -> tuple:
    c = run.config
    other = tuple(sorted((k, repr(v)) for k, v in run.hyper.items() if k != "lr"))
    return c.model, c.task, c.method(), other


def _groups(sweep: Sweep) -> dict[tuple, dict[float, dict[Any, PlannedRun]]]:
    """{group: {lr: {seed: run}}} of the groups whose block grids over ``lr`` with 2 or more points."""
    groups: dict[tuple, dict[float, dict[Any, PlannedRun]]] = {}
    for run in sweep.runs:
        if "lr" in run.hyper:
            groups.setdefault(_group_key(run), {}).setdefault(float(run.config.lr), {})[run.config.seed] = run
    return {k: v for k, v in groups.items() if len(v) >= 2}


def _score(out: Path, run: PlannedRun | None) -> float | None:
    if run is None:
        return None
    result = results.read_result(results.result_path(out, run.run_id))
    if result is None:
        return None
    value = results.metric_of(result, select=True)[0] if result.get("status") == "ok" else None
    return FAILED if value is None else value


def step_of(lrs: list[float]) -> float:
    """The grid's geometric step: the mean ratio between neighbouring learning rates."""
    lrs = sorted(lrs)
    return math.exp((math.log(lrs[-1]) - math.log(lrs[0])) / (len(lrs) - 1)) if len(lrs) > 1 else 2.0


def _new_point(run: PlannedRun, lr: float, seed: Any) -> PlannedRun:
    cfg = dataclasses.replace(run.config, lr=float(f"{lr:.6g}"), seed=seed)
    return PlannedRun(cfg.run_id(), cfg, {**run.hyper, "lr": cfg.lr})


def extensions(sweep: Sweep, original: dict[tuple, tuple[float, float]]) -> tuple[list[PlannedRun], list[str]]:
    """(new runs due to the results on disk, notes of groups that hit the bound). ``original``:
    each group's (lowest, highest) learning rate as planned."""
    out, seeds = Path(sweep.out), list(dict.fromkeys(r.config.seed for r in sweep.runs))
    first = sweep.runs[0].config.seed if sweep.runs else None  # the plan runs every first seed first
    new, notes = [], []
    for key, by_lr in _groups(sweep).items():
        lrs = sorted(by_lr)
        scores = {lr: _score(out, by_lr[lr].get(first)) for lr in lrs}
        if any(v is None for v in scores.values()):
            continue  # the first seed of this group is still running
        top = max(scores.values())
        tied = [lr for lr in lrs if scores[lr] == top]  # ties are common on a few hundred val examples
        if len(tied) == len(lrs) or not {lrs[0], lrs[-1]} & set(tied):
            continue  # a flat grid says nothing of a direction; an interior best is found
        best = lrs[-1] if lrs[-1] in tied else lrs[0]  # an edge among the best: look past it
        low, high = original[key]
        side = -1 if best == lrs[0] else 1
        beyond = sum(1 for lr in lrs if (lr < low if side < 0 else lr > high))
        if beyond >= sweep.extend_grid:
            notes.append(f"{key[2]} on {key[1]}: best lr {best:g} is still at the edge after {beyond} extra "
                         f"point(s) (extend_grid: {sweep.extend_grid}); its best may lie further out")
            continue
        ratio = step_of([lr for lr in lrs if low <= lr <= high]) ** side
        template = by_lr[best][first]
        new += [_new_point(template, best * ratio, seed) for seed in seeds]
    return new, notes


def original_edges(sweep: Sweep) -> dict[tuple, tuple[float, float]]:
    return {key: (min(by_lr), max(by_lr)) for key, by_lr in _groups(sweep).items()}


def bound_note(sweep: Sweep) -> str | None:
    """What ``--dry-run`` says of the extension: the most extra runs it may add."""
    if not sweep.extend_grid:
        return None
    groups = _groups(sweep)
    seeds = len({r.config.seed for r in sweep.runs})
    most = 2 * sweep.extend_grid * len(groups)
    return (f"extend_grid: {sweep.extend_grid}: a group whose best lr (seed {sweep.runs[0].config.seed}, "
            f"selection split) is at an edge of its grid gets one more point on that side, up to "
            f"{sweep.extend_grid} per side: at most {most} extra configurations over {len(groups)} lr grids "
            f"(x {seeds} seeds: {most * seeds} runs without halving)")


def run_extending(sweep: Sweep, run: Callable[[Sweep], dict[str, str | None]]) -> tuple[Sweep, dict, list[str]]:
    """Run the first seed of every lr grid, extend the grids while a best sits at an edge (each new
    point's first seed runs before the next decision), then return the extended sweep (the caller
    runs the rest: halving or every seed) with the statuses so far and the bound notes."""
    edges = original_edges(sweep)
    first = sweep.runs[0].config.seed
    statuses: dict[str, str | None] = {}
    while True:
        due = [r for r in sweep.runs if r.config.seed == first and r.run_id not in statuses]
        if due:
            statuses.update(run(dataclasses.replace(sweep, runs=due)))
        added, notes = extensions(sweep, edges)
        known = {r.run_id for r in sweep.runs}
        added = [r for r in added if r.run_id not in known]
        if not added:
            return sweep, statuses, notes
        sweep = dataclasses.replace(sweep, runs=sweep.runs + added)
