"""``--dry-run``: every planned run with its status or estimated time (``estimate``), and with
``halving`` the most runs the rung rule starts and their cost against one configuration per method."""

from __future__ import annotations

from typing import Any

from .. import results
from ..units import format_seconds
from .estimate import estimate_seconds, measured_rates
from .extend import bound_note
from .halving import active, planned_cost, stale_note


def print_plan(sweep: Any) -> None:
    """Every planned run (``plan.Sweep``) with its status or estimated time, and the total; with
    ``halving``, the rung rule's most runs and their cost against a single-configuration sweep."""
    rates = measured_rates(sweep.out)
    due, pruned = active(sweep) if sweep.halving else (sweep.runs, {})
    due_ids = {r.run_id for r in due}
    total, undecided = 0.0, []
    for run in sweep.runs:
        status = results.status_of(results.result_path(sweep.out, run.run_id))
        est = 0.0 if status else estimate_seconds(run.config, rates)
        if status or run.run_id in pruned:
            shown = status or "pruned"
        elif run.run_id in due_ids:
            shown, total = "~" + format_seconds(est), total + est
        else:  # a later rung: runs only if halving keeps its configuration
            shown = f"if kept: ~{format_seconds(est)}"
            undecided.append(est)
        print(f"{run.describe()}  [{shown}]")
    starts = len(sweep.runs)
    if sweep.halving:
        starts, single = planned_cost(sweep)
        later = min(len(undecided), max(0, starts - len(due_ids)))
        total += later * sum(undecided) / len(undecided) if undecided else 0.0
        print(f"successive halving (eta {sweep.halving}): at most {starts} of the {len(sweep.runs)} planned runs; "
              f"one configuration per method would run {single} ({starts / single:.1f}x)")
    for note in (stale_note(sweep, pruned), bound_note(sweep)):
        if note:
            print(note)
    how = "measured by finished runs in the out folder where available, else" if rates else "no finished runs yet:"
    print(f"{len(sweep.runs)} runs into {sweep.out}; estimated time for the runs not done: {format_seconds(total)} "
          f"({how} assumed examples/s per model, lorabench.models.ALIASES)")
    share = starts / len(sweep.runs) if sweep.runs else 1.0
    cpu, gpu = (share * sum(estimate_seconds(r.config, gpu=g) for r in sweep.runs) for g in (False, True))
    print(f"the whole sweep from scratch at the assumed rates: {cpu / 3600:.1f} CPU hours (2 cores), "
          f"{gpu / 3600:.2f} GPU hours")
