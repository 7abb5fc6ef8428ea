"""Sweeps: many runs from one YAML file, resumable, on this machine or a Ray cluster.

    plan.py       the sweep file format and presets -> a validated list of planned runs
    estimate.py   how long the runs not done yet will take
    halving.py    successive halving over each grid, seeds as the budget (``halving: ETA``)
    dry_run.py    ``--dry-run``: the plan, its estimated time and cost
    local.py      the local backend: one run process after another, resume, failure results
    ray.py        the Ray backend: one Ray task per run (imports local, never the other way)

The command line (``lorabench sweep``, ``lorabench bench``) is ``commands/sweep.py``.
"""

from ..errors import SweepError
from .dry_run import print_plan
from .estimate import estimate_seconds, measured_rates
from .local import run_one, run_sweep
from .plan import PlannedRun, Sweep, find_sweep_file, load_sweep, plan, presets_dir, read_yaml

__all__ = ["PlannedRun", "Sweep", "SweepError", "estimate_seconds", "find_sweep_file", "load_sweep",
           "measured_rates", "plan", "presets_dir", "print_plan", "read_yaml", "run_one", "run_sweep"]
