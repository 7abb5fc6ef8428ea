"""The guarantees every kind of run keeps, one parametrized test per guarantee over ``kinds.KINDS``:
bf16 autocast honoured, training time and peak memory recorded, the curve logged to TensorBoard,
``--save-adapter`` honoured or refused before compute, and a diverging run recorded as ``diverged``
and never picked. Each kind runs at its tiniest (1- or 2-layer real models, a few dozen examples;
the U-Net on three synthetic images). A new kind fails ``test_every_kind_is_covered`` until it is
added here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers_pool import save_random_lora

from lorabench import kinds, run, selection
from lorabench.config import RunConfig
from lorabench.errors import ConfigError

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
pytestmark = pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"GLUE data not found at {GLUE}")
TEXT = {"model": "minilm", "layers": 2, "task": "sst2", "train_limit": 32, "eval_limit": 32, "max_length": 32,
        "batch_size": 8, "epochs": 1, "data_dir": str(GLUE), "quiet": True}


@pytest.fixture(scope="module")
def pools(tmp_path_factory) -> dict[str, Path]:
    """A merge pool (sst2 + mrpc) and a recycling pool (mrpc + cola: the target sst2 held out), and
    three synthetic membrane images for the U-Net."""
    from test_segmentation import write_folder

    made = {}
    for name, tasks in (("merge", ("sst2", "mrpc")), ("recycle", ("mrpc", "cola"))):
        root = tmp_path_factory.mktemp(name)
        for i, task in enumerate(tasks):
            save_random_lora(root, task, task, model_seed=0, factor_seed=i, result={"task": task, "run_id": task})
        made[name] = root
    made["images"] = tmp_path_factory.mktemp("segment") / "data"
    write_folder(made["images"])
    return made


def config(kind: str, pools: dict[str, Path], out: Path, **over) -> dict:
    """The tiniest config of ``kind``."""
    if kind == "merge":
        base = {**TEXT, "layers": 1, "scenario": {"pool": [str(pools["merge"])], "method": "ties"}}
        for k in ("train_limit", "epochs", "batch_size"):
            base.pop(k)
    elif kind == "recycle":
        base = {**TEXT, "layers": 1, "scenario": {"pool": [str(pools["recycle"])], "n_examples": 16, "steps": 3}}
        for k in ("train_limit", "epochs"):
            base.pop(k)
    elif kind == "segment":
        base = {"task": "membrane", "data_dir": str(pools["images"]), "epochs": 1, "batch_size": 2, "lr": 1e-2,
                "quiet": True, "scenario": {"base": 8, "depth": 2, "patch": 16, "patches_per_image": 1,
                                            "train_images": "0-1", "test_images": "2", "source_steps": 2,
                                            "source_batch": 2, "arm": "lora"}}
    else:
        scenario = {"run": {}, "federated": {"method": "ffa_lora", "clients": 2, "rounds": 1, "beta": 0.5},
                    "prune": {"method": "loraprune", "sparsity": 0.5},
                    "mixture": {"tasks": ["sst2", "mrpc"], "method": "lora"},
                    "transfer": {"method": "trans_lora", "arm": "direct"}}[kind]
        base = {**TEXT, "scenario": scenario}
    return {**base, "kind": kind, "out": str(out), **over}


def test_every_kind_is_covered():
    assert set(kinds.KINDS) == set(KINDS)


KINDS = ("run", "federated", "prune", "recycle", "segment", "merge", "mixture", "transfer")


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_autocasts_meters_logs_and_saves_or_refuses(kind, pools, tmp_path, monkeypatch):
    monkeypatch.setenv("LORABENCH_CACHE", str(tmp_path / "cache"))  # the U-Net's pretrained source
    seen = []
    real = torch.autocast

    def spy(device_type, dtype=None, *args, **kwargs):  # every kind's forward autocasts through torch.autocast
        seen.append(dtype)
        return real(device_type, *args, dtype=dtype, **kwargs)

    monkeypatch.setattr(torch, "autocast", spy)
    data = config(kind, pools, tmp_path, precision="bf16", log_with="tensorboard", save_adapter=True)
    try:
        cfg = RunConfig.from_dict(data)
    except ConfigError as e:  # refused before compute, with a message naming the flag
        assert "--save-adapter" in str(e) and not list(tmp_path.glob("run-*.json"))
        cfg = RunConfig.from_dict({**data, "save_adapter": False})
    result = run.execute(cfg, progress=False)
    assert result["status"] == "ok" and result["kind"] == kind and result["method"] == cfg.method()
    assert seen and all(d == torch.bfloat16 for d in seen)
    if kind != "merge":  # a merge trains nothing: its "train" time is the merge itself, maybe ~0
        assert result["time"]["train_s"] > 0
    assert result["memory"]["peak_rss_bytes"] > 0 and result["time"]["eval_s"] >= 0
    assert result["metric"]["reported_on"] is not None
    if cfg.save_adapter:
        folder = tmp_path / f"run-{result['run_id']}-adapter"
        assert folder.is_dir() and any(folder.iterdir()) and result["adapter_bytes"] > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for e in (tmp_path / "tracking" / "tensorboard").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(e.parent))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    split = result["metric"]["reported_on"]
    assert f"eval/{split}/{result['primary_metric']}" in tags and "summary/time/train_s" in tags
    assert ("train/loss" in tags) == (kind != "merge")  # the curve of every kind that trains


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "merge"])  # a merge trains nothing: no step to diverge
def test_every_kind_that_trains_records_a_divergence_and_never_picks_it(kind, pools, tmp_path, monkeypatch):
    monkeypatch.setenv("LORABENCH_CACHE", str(tmp_path / "cache"))
    if kind == "recycle":
        # its learnt coefficients stay finite at any lr and the LayerNorm after each adapted layer bounds
        # their effect (lr 1e8 trains to a loss of 0.73): a NaN loss is the divergence it can meet
        real = torch.nn.functional.cross_entropy
        monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda *a, **k: real(*a, **k) * float("nan"))
        over = {}
    else:
        over = {"lr": 1e4}
    cfg = RunConfig.from_dict(config(kind, pools, tmp_path, **over))
    with pytest.warns(UserWarning, match="diverged"):
        result = run.execute(cfg, progress=False)
    assert result["status"] == "diverged"
    runs = [r for r in selection.load_runs(tmp_path) if r.run_id == result["run_id"]]
    assert [r.status for r in runs] == ["diverged"] and runs[0].metric is None
    assert not selection.select_best(selection.configurations(selection.load_runs(tmp_path)))
