"""Execute a pack: K run configs -> K runs over one frozen base -> K result JSONs.

Each result has the schema of a single run's, plus ``packed_with`` (the other run ids of the pack)
and ``packed`` (its size, its wall time, how time is counted). ``time.train_s`` of a packed run is its share of the pack's wall
time (each step's time divided by the runs that took part in it) and ``time.eval_s`` its share of
the evaluation passes: the sum over a pack's runs is the pack's wall time, so a per-run time in a
table stays honest (a packed run is cheaper, and says why). A run's result is written the moment
it leaves the pack (finished or diverged), so a crash or kill loses only the runs still training,
which a rerun of the sweep trains again. A run with ``--log-with`` logs its recorded curve (the
training loss every ``log_every`` steps, each evaluation, the summary) to its trackers when it leaves
the pack (``trackers.RunTracker.log_record``), not step by step as a run alone does.

``main`` is the process a sweep starts for a pack:
``python -m lorabench.pack [--parent PID] [--progress FILE] CONFIG RUN_ID [CONFIG RUN_ID ...]``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from .. import models, results, trackers
from ..config import RunConfig, load_yaml
from ..errors import INPUT_ERRORS, ConfigError
from ..launch import die_with_parent
from ..data.batching import pad_token_id
from ..run import load, load_base, result_of, save_run_adapter
from . import plan
from .fit import Member, fit_pack
from .model import PackedModel, share_frozen


def check_pack(cfgs: list[RunConfig]) -> None:
    """Every config can pack, with the others (ConfigError naming the first that cannot)."""
    if not cfgs:
        raise ConfigError("a pack needs at least one run config")
    for cfg in cfgs:
        why = plan.unpackable(cfg)
        if why is not None:
            raise ConfigError(f"run {cfg.variant} lr={cfg.lr} seed={cfg.seed} cannot be packed: {why}; "
                              "train it alone (lorabench train) or drop --pack")
        if plan.key(cfg) != plan.key(cfgs[0]):
            differ = [f for f in plan.SHARED if getattr(cfg, f) != getattr(cfgs[0], f)]
            raise ConfigError(f"the runs of a pack must share {', '.join(plan.SHARED)}; these differ: "
                              f"{', '.join(differ)}")


def progress_writer(path: str | Path, every_s: float = 1.0) -> Callable[[int, int], None]:
    """``progress(done, total)`` that writes ``{"done", "total"}`` (optimizer steps over the pack's runs)
    to ``path`` atomically, at most every ``every_s`` seconds and at the end, for the sweep's bar."""
    last = [0.0]

    def write(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s or done >= total:
            last[0] = now
            results.write_json_atomic(Path(path), {"done": done, "total": total})

    return write


def execute_pack(cfgs: list[RunConfig], progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """Train ``cfgs`` as one pack; write and return their results (in order). ``progress(done, total)``:
    the optimizer steps taken and planned over the runs, after every step."""
    check_pack(cfgs)
    datas = [c.data_fingerprint() for c in cfgs]
    rids = [results.run_id(c.resolved(), d) for c, d in zip(cfgs, datas)]
    if len(set(rids)) != len(rids):
        raise ConfigError("a pack holds the same run twice; plan each run once")
    for c in cfgs:
        results.check_writable(c.out)
        if c.log_with:
            trackers.check_installed(c.log_with)  # before compute: the curve is logged when the run leaves the pack
    started = results.now()
    task = None
    shared, tokenizer = load_base(cfgs[0])
    members = []
    for k, cfg in enumerate(cfgs):  # each loaded exactly as alone, then its frozen tensors shared
        task, model, _, train_loader, dev_loaders = load(cfg)
        share_frozen(model, shared)
        members.append(Member(k, cfg, model, train_loader, dev_loaders))
    packed = PackedModel(shared, [m.model for m in members], [c.seed for c in cfgs], pad_token_id(tokenizer))
    written: dict[int, dict] = {}

    def write(m: Member) -> None:
        cfg, rid = m.cfg, rids[m.index]
        adapter_bytes = save_run_adapter(cfg, rid, m.model) if cfg.save_adapter and m.state.status == "ok" else None
        result = result_of(cfg, rid, datas[m.index], started, task, m.model, m.state, m.train_loader,
                           m.dev_loaders, adapter_bytes)
        result["packed_with"] = [r for r in rids if r != rid]
        result["packed"] = {"size": len(cfgs), "wall_s": m.state.time.get("pack_wall_s"),
                            "time": "train_s and eval_s are this run's share of the pack's wall time; "
                                    "wall_s: the pack's training wall time until this run left it"}
        results.write_json_atomic(results.result_path(cfg.out, rid), result)
        written[m.index] = result
        with trackers.open_run(cfg, rid) as tracker:  # its recorded curve, as a scenario run logs it
            tracker.log_record(result)

    try:
        fit_pack(packed, members, task, on_finish=write, progress=progress)
    except (KeyboardInterrupt, ConfigError):
        raise  # no result for the runs still training: a rerun trains them
    except Exception as e:  # the runs still training crashed: record them, keep the finished ones
        status = "oom" if isinstance(e, torch.cuda.OutOfMemoryError) else "error"
        for m in members:
            if m.index not in written:
                m.state.status, m.state.error = status, f"{type(e).__name__}: {e}"
                write(m)
        raise
    return [written[k] for k in range(len(cfgs))]


def main(argv: list[str] | None = None) -> int:
    """``python -m lorabench.pack [--parent PID] CONFIG RUN_ID ...``: exit 0 when every run is ok,
    3 when one diverged, 1 on a crash, 2 on bad input, 130 on Ctrl-C."""
    p = argparse.ArgumentParser(prog="python -m lorabench.pack")
    p.add_argument("--parent", type=int, default=None)
    p.add_argument("--progress", default=None, metavar="FILE", help="write the steps done / planned to FILE (JSON)")
    p.add_argument("pairs", nargs="+", help="CONFIG RUN_ID, for every run of the pack")
    args = p.parse_args(argv)
    if len(args.pairs) % 2:
        p.error("give a run id after every config")
    if args.parent is not None:
        die_with_parent(signal.SIGKILL, args.parent)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the sweep's to handle
    try:
        cfgs = [RunConfig.from_dict(load_yaml(path)) for path in args.pairs[::2]]
        for cfg, planned in zip(cfgs, args.pairs[1::2]):
            if cfg.run_id() != planned:
                raise ConfigError(f"a config resolves to run id {cfg.run_id()}, the caller planned {planned}: its "
                                  "data changed since the run was planned; plan it again")
        models.quiet_transformers()
        done = execute_pack(cfgs, progress_writer(args.progress) if args.progress else None)
        return 0 if all(r["status"] == "ok" for r in done) else 3
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        traceback.print_exc()
        print(f"error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}", file=sys.stderr)
        return 2 if isinstance(e, INPUT_ERRORS) else 1
