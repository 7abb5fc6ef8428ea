"""The README's main job (``lorabench bench``: the quick preset, 18 runs) with another code path,
side by side in one invocation, on this machine.

    python benchmarks/bench_speed.py --baseline REV        # a checkout of commit REV (git worktree)
    python benchmarks/bench_speed.py --baseline pack1      # this tree with --pack 1 (every run alone)
    python benchmarks/bench_speed.py --baseline REV --order new-first

Both ways run ``python -m lorabench sweep quick --quiet`` in a fresh output folder and a fresh
process tree, one after the other (``--order`` picks which first; nothing else should run), and
the script prints each way's wall time, the ratio, and the table of every run's dev accuracy both
ways, keyed by run id (the same configurations have the same run ids in both trees). A run packed
today equals its unpacked twin (``tests/test_pack.py``): against ``pack1`` every accuracy must be
equal; against an older commit the runs that commit packed with other dropout masks may differ.

Target (2 CPU cores): this tree at least 2x faster than the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sweep(src: Path, out: Path, extra: list[str]) -> float:
    """Wall seconds of ``lorabench sweep quick`` run with the package in ``src``."""
    env = dict(os.environ, PYTHONPATH=str(src))
    glue = ROOT.parent / "shared" / "data" / "glue"  # the GLUE folder beside the repository, as CI has it
    if "LORABENCH_GLUE_DIR" not in env and glue.is_dir():
        env["LORABENCH_GLUE_DIR"] = str(glue)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lorabench", "sweep", "quick", "--out", str(out), "--quiet", *extra],
                   check=True, env=env, cwd=src.parent)
    return time.perf_counter() - t0


def accuracies(out: Path) -> dict[str, tuple[str, float | None]]:
    """run id -> (variant seed, dev accuracy of its best evaluation)."""
    rows = {}
    for path in sorted(out.glob("run-*.json")):
        r = json.loads(path.read_text())
        best = (r.get("best") or {}).get("metrics", {})
        acc = next((m.get("accuracy") for m in best.values() if "accuracy" in m), None)
        rows[r["run_id"]] = (f"{r['config']['variant']} seed {r['config']['seed']}", acc)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", required=True, help="a git revision, or pack1 (this tree with --pack 1)")
    p.add_argument("--order", choices=["baseline-first", "new-first"], default="baseline-first")
    p.add_argument("--keep", default=None, metavar="DIR", help="copy this tree's sweep folder to DIR (for its report)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.baseline == "pack1":
            base_src, base_extra = ROOT / "src", ["--pack", "1"]
        else:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tmp / "old"), args.baseline],
                           check=True, capture_output=True)
            base_src, base_extra = tmp / "old" / "src", []
        ways = {"baseline": (base_src, base_extra), "this tree": (ROOT / "src", [])}
        order = list(ways) if args.order == "baseline-first" else list(ways)[::-1]
        wall = {}
        try:
            for name in order:
                src, extra = ways[name]
                wall[name] = sweep(src, tmp / name.replace(" ", "-"), extra)
                print(f"{name}: {wall[name]:.0f} s", flush=True)
            got = {name: accuracies(tmp / name.replace(" ", "-")) for name in ways}
            if args.keep:
                shutil.copytree(tmp / "this-tree", args.keep, dirs_exist_ok=True)
        finally:
            if args.baseline != "pack1":
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "old")],
                               capture_output=True)
    print(f"\nlorabench bench, 18 runs, {os.cpu_count()} CPUs, baseline {args.baseline}, {args.order}")
    print("| way | wall |\n|---|---:|")
    for name in ways:
        minutes, seconds = divmod(round(wall[name]), 60)  # 659.6 s is 11 min 0 s, not 10 min 60 s
        print(f"| {name} | {minutes} min {seconds} s |")
    print(f"speed-up: {wall['baseline'] / wall['this tree']:.2f}x\n")
    print("| run | baseline acc | this tree acc | equal |\n|---|---:|---:|:-:|")
    for rid, (what, acc) in got["this tree"].items():
        old = got["baseline"].get(rid, (what, None))[1]
        cell = lambda a: "-" if a is None else f"{100 * a:.2f}"  # noqa: E731
        print(f"| {what} ({rid[:8]}) | {cell(old)} | {cell(acc)} | {'yes' if old == acc else 'no'} |")


if __name__ == "__main__":
    main()
