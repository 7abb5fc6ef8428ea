"""Learning-rate grids that find their interior (``extend_grid``), on synthetic results folders: the
runs never train, a fake runner writes each run's result from a known curve metric(lr)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from lorabench import results
from lorabench.sweep import load_sweep
from lorabench.sweep.extend import bound_note, extensions, original_edges, run_extending, step_of

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
pytestmark = pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"GLUE data not found at {GLUE}")


def sweep_file(tmp_path: Path, lrs: list[float], extend: int, halving: int | None = None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    spec = {"name": "ext", "base": {"model": "minilm", "task": "sst2", "data_dir": str(GLUE), "train_limit": 100},
            "seeds": [0, 1], "extend_grid": extend, "variants": {"lora": {"lr": lrs}, "dora": {"lr": [1e-3]}}}
    if halving:
        spec["halving"] = halving
    (tmp_path / "ext.yaml").write_text(yaml.safe_dump(spec))
    return load_sweep(tmp_path / "ext.yaml", {"out": str(tmp_path / "out")})


def write_result(out: Path, run, value: float) -> None:
    cfg = run.config
    r = results.new_result(run.run_id, cfg.resolved(), data=cfg.data_fingerprint(), primary_metric="accuracy",
                           env={}, started_at=results.now(), status="ok")
    point = {"step": 1, "epoch": 1.0, "metrics": {"validation": {"accuracy": value}}}
    r.update(best=point, final=point)
    results.write_json_atomic(results.result_path(out, run.run_id), r)


def curve(peak: float):
    return lambda lr: 0.9 - 0.01 * (math.log2(lr) - math.log2(peak)) ** 2


def fake_runner(out: Path, metric):
    def run(part):
        for r in part.runs:
            write_result(out, r, metric(r.config.lr))
        return {r.run_id: "ok" for r in part.runs}
    return run


def test_a_best_at_the_top_edge_adds_one_step_up_for_every_seed(tmp_path):
    sweep = sweep_file(tmp_path, [1e-3, 2e-3], extend=2)
    edges = original_edges(sweep)
    assert len(edges) == 1  # dora's one-point block is no grid
    out = Path(sweep.out)
    for r in sweep.runs:
        if r.config.seed == 0 and r.config.variant == "lora":
            write_result(out, r, curve(8e-3)(r.config.lr))
    new, notes = extensions(sweep, edges)
    assert sorted((r.config.lr, r.config.seed) for r in new) == [(4e-3, 0), (4e-3, 1)] and not notes
    assert step_of([1e-3, 2e-3, 4e-3]) == pytest.approx(2.0)


def test_the_grid_grows_until_the_best_is_interior(tmp_path):
    sweep = sweep_file(tmp_path, [5e-4, 1e-3, 2e-3], extend=3)
    out = Path(sweep.out)
    extended, statuses, notes = run_extending(sweep, fake_runner(out, curve(5e-3)))
    lrs = sorted({r.config.lr for r in extended.runs if r.config.variant == "lora"})
    assert lrs == [5e-4, 1e-3, 2e-3, 4e-3, 8e-3]  # 4e-3 (the best of them) is interior once 8e-3 ran
    assert not notes and all(s == "ok" for s in statuses.values())
    ran = {r.config.lr for r in extended.runs if r.run_id in statuses}
    assert 8e-3 in ran and all(r.config.seed == 0 for r in extended.runs if r.run_id in statuses)


def test_the_bound_stops_the_growth_and_says_so(tmp_path):
    sweep = sweep_file(tmp_path, [1e-3, 2e-3], extend=1)
    out = Path(sweep.out)
    extended, _, notes = run_extending(sweep, fake_runner(out, curve(1e-1)))  # the best lies far above
    lrs = sorted({r.config.lr for r in extended.runs if r.config.variant == "lora"})
    assert lrs == [1e-3, 2e-3, 4e-3]
    assert len(notes) == 1 and "still at the edge after 1 extra point" in notes[0]
    assert "at most 2 extra configurations over 1 lr grids" in bound_note(sweep)


def test_a_best_at_the_low_edge_grows_down_and_an_interior_best_stays(tmp_path):
    sweep = sweep_file(tmp_path, [1e-3, 2e-3, 4e-3], extend=2)
    out = Path(sweep.out)
    extended, _, _ = run_extending(sweep, fake_runner(out, curve(2e-3)))
    assert len(extended.runs) == len(sweep.runs)  # interior: nothing added
    sweep2 = sweep_file(tmp_path / "b", [1e-3, 2e-3, 4e-3], extend=2)
    extended, _, _ = run_extending(sweep2, fake_runner(Path(sweep2.out), curve(4e-4)))
    assert sorted({r.config.lr for r in extended.runs if r.config.variant == "lora"})[:2] == [2.5e-4, 5e-4]


def test_extend_grid_must_be_a_count(tmp_path):
    with pytest.raises(Exception, match="extend_grid must be an integer >= 0"):
        sweep_file(tmp_path, [1e-3, 2e-3], extend=-1)


def test_an_edge_tied_with_the_best_extends(tmp_path):
    sweep = sweep_file(tmp_path, [1e-3, 2e-3, 4e-3], extend=1)
    out = Path(sweep.out)
    values = {1e-3: 0.80, 2e-3: 0.85, 4e-3: 0.85}  # the top edge ties the interior best
    extended, _, _ = run_extending(sweep, fake_runner(out, lambda lr: values.get(lr, 0.84)))
    assert 8e-3 in {r.config.lr for r in extended.runs}
