"""Multi-task merging (``lorabench.merging``, ``lorabench merge``): each method against its formula.

Random LoRA adapters on the tiny BERT of conftest (targets query, value: 32 x 32, r = 4) are saved
as ``run-<n>-adapter/`` with a minimal ``run-<n>.json`` beside them; one end-to-end CLI test trains
two tiny adapters on 2-layer MiniLM.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lorabench
from conftest import build_model, layers, make_batch, outputs
from lorabench import commands as cli
from lorabench.errors import AdapterFileError, VariantError
from lorabench.merging import merge_adapters, write_merged

TARGETS = ["query", "value"]


def saved(tmp: Path, seed: int, task: str = "sst2", variant: str = "lora", base_seed: int = 0, **options):
    """A random adapter saved as tmp/run-<seed>-adapter (+ its result JSON); returns (folder, model)."""
    model = build_model("bert", base_seed)
    lorabench.apply(model, variant, targets=TARGETS, **({"r": 4, "alpha": 8.0} | options))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in layers(model).items():
            for p in layer.adapter.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        model.classifier.weight.add_(torch.randn(model.classifier.weight.shape, generator=g))
    folder = tmp / f"run-{seed}-adapter"
    lorabench.save_adapter(model, folder)
    (tmp / f"run-{seed}.json").write_text(json.dumps({"task": task, "run_id": str(seed)}))
    return folder, model


@torch.no_grad()
def delta_of(model) -> dict[str, torch.Tensor]:
    """Each layer's change to the ORIGINAL base weight (PiSSA: W_res + s B A - W)."""
    base = dict(build_model("bert").named_modules())
    return {n: layer.adapter.merged_weight(layer.weight.float()) - base[n].weight for n, layer in layers(model).items()}


def product(merged) -> dict[str, torch.Tensor]:
    return {n: B @ A for n, (B, A) in merged.factors.items()}


@pytest.fixture
def two(tmp_path):
    return [saved(tmp_path, 1, "sst2"), saved(tmp_path, 2, "rte")]


def close(a: dict, b: dict, atol=1e-5):
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n], b[n], atol=atol, rtol=1e-4, msg=n)


def test_concat_is_the_exact_sum_and_reloads_to_it(two, tmp_path):
    (a, ma), (b, mb) = two
    merged = merge_adapters([a, b], "concat")
    assert merged.rank == 8
    close(product(merged), {n: delta_of(ma)[n] + delta_of(mb)[n] for n in delta_of(ma)})
    folders = write_merged(merged, tmp_path / "out")
    model = lorabench.load_adapter(build_model("bert"), folders["sst2"])
    x = torch.randn(3, 32)
    for n, layer in layers(model).items():  # the layer's delta: the sum of the two adapters' deltas
        expect = layers(ma)[n].adapter.delta(x) + layers(mb)[n].adapter.delta(x)
        torch.testing.assert_close(layer.adapter.delta(x), expect, atol=1e-5, rtol=1e-4)
    plain = build_model("bert")  # the base with W + dW1 + dW2 and sst2's own head
    with torch.no_grad():
        for n, m in plain.named_modules():
            if n in product(merged):
                m.weight.add_(product(merged)[n])
        plain.classifier.load_state_dict(ma.classifier.state_dict())
    torch.testing.assert_close(outputs(model, make_batch()), outputs(plain, make_batch()), atol=1e-5, rtol=1e-4)
    other = lorabench.load_adapter(build_model("bert"), folders["rte"])  # same update, rte's head
    torch.testing.assert_close(other.classifier.weight, mb.classifier.weight)


def test_linear_is_the_weighted_sum_and_defaults_to_the_mean(two):
    (a, ma), (b, mb) = two
    d1, d2 = delta_of(ma), delta_of(mb)
    close(product(merge_adapters([a, b], "linear", weights=[0.3, -0.7])), {n: 0.3 * d1[n] - 0.7 * d2[n] for n in d1})
    close(product(merge_adapters([a, b], "linear")), {n: (d1[n] + d2[n]) / 2 for n in d1})


def test_a_pissa_adapter_merges_as_its_change_to_the_original_base(tmp_path):
    (a, ma), (b, mb) = saved(tmp_path, 1, init="pissa"), saved(tmp_path, 2, "rte")
    merged = merge_adapters([a, b], "concat")
    assert merged.rank == 4 * 2 + 4  # PiSSA: [s B | -s B0], [A; A0]
    close(product(merged), {n: delta_of(ma)[n] + delta_of(mb)[n] for n in delta_of(ma)})


def ties_formula(ds, w, density):
    trimmed = []
    for d in ds:
        keep = round(density * d.numel())
        threshold = d.abs().flatten().sort(descending=True).values[keep - 1]
        trimmed.append(torch.where(d.abs() >= threshold, d, torch.zeros_like(d)))
    t = torch.stack(trimmed) * torch.tensor(w)[:, None, None]
    sign = torch.sign(t.sum(0))
    sign[sign == 0] = 1
    agree = torch.sign(t) == sign
    return (t * agree).sum(0) / agree.sum(0).clamp(min=1)


def test_ties_follows_trim_elect_disjoint_mean(two, tmp_path):
    (a, ma), (b, mb) = two
    c, mc = saved(tmp_path, 3, "cola")
    ds = [delta_of(m) for m in (ma, mb, mc)]
    merged = merge_adapters([a, b, c], "ties", density=0.3, weights=[1.0, 0.5, 2.0], k=32)  # full rank: no truncation
    close(product(merged), {n: ties_formula([d[n] for d in ds], [1.0, 0.5, 2.0], 0.3) for n in ds[0]}, atol=1e-4)
    low = merge_adapters([a, b, c], "ties")  # default: density 0.2, rank = the adapters' r
    assert low.rank == 4 and low.density == 0.2
    for n, m in product(low).items():
        s = torch.linalg.svdvals(ties_formula([d[n] for d in ds], [1.0] * 3, 0.2))
        assert torch.linalg.matrix_norm(m - ties_formula([d[n] for d in ds], [1.0] * 3, 0.2)) ** 2 == \
            pytest.approx(float((s[4:] ** 2).sum()), rel=1e-3)  # the best rank-4 approximation (Eckart-Young)


def test_dare_drops_rescales_and_sums_with_seeded_masks(two):
    (a, ma), (b, mb) = two
    d1, d2 = delta_of(ma), delta_of(mb)
    g = torch.Generator().manual_seed(7)
    expect = {}
    for n in d1:  # the target order, adapter by adapter
        total = 0
        for d, w in ((d1[n], 0.5), (d2[n], 1.5)):
            total = total + w * torch.bernoulli(torch.full_like(d, 0.4), generator=g) * d / 0.4
        expect[n] = total
    close(product(merge_adapters([a, b], "dare", density=0.4, weights=[0.5, 1.5], k=32, seed=7)), expect, atol=1e-4)
    again = merge_adapters([a, b], "dare", density=0.4, seed=7)
    assert all(torch.equal(x, y) for x, y in zip(product(again).values(), product(merge_adapters(
        [a, b], "dare", density=0.4, seed=7)).values()))


def test_lego_with_k_total_rank_is_concatenation_and_default_rank_r(two, tmp_path):
    (a, ma), (b, mb) = two
    close(product(merge_adapters([a, b], "lego", k=8)), product(merge_adapters([a, b], "concat")), atol=1e-4)
    merged = merge_adapters([a, b], "lego", seed=3)
    assert merged.rank == 4 and all(B.shape == (32, 4) and A.shape == (4, 32) for B, A in merged.factors.values())
    model = lorabench.load_adapter(build_model("bert"), write_merged(merged, tmp_path / "lego")["rte"])
    assert torch.isfinite(outputs(model, make_batch())).all()


def test_bad_inputs_are_refused_before_compute(two, tmp_path):
    (a, _), (b, _) = two
    with pytest.raises(AdapterFileError, match="two or more adapters"):
        merge_adapters([a], "concat")
    (tmp_path / "x").mkdir()
    other, _ = saved(tmp_path / "x", 5, base_seed=1)
    with pytest.raises(AdapterFileError, match="base weights"):
        merge_adapters([a, other], "linear")
    (tmp_path / "d").mkdir()
    dora, _ = saved(tmp_path / "d", 6, variant="dora")
    with pytest.raises(VariantError, match="'dora' adapter, which cannot merge.*lora, "):
        merge_adapters([a, dora], "ties")
    for kw, match in (({"density": 1.5}, "density must be in"), ({"density": 0.0}, "density must be in"),
                      ({"weights": [1.0]}, "one weight per adapter")):
        with pytest.raises(VariantError, match=match):
            merge_adapters([a, b], "ties", **kw)
    with pytest.raises(VariantError, match="takes no --density"):
        merge_adapters([a, b], "linear", density=0.5)
    with pytest.raises(VariantError, match="larger than min"):
        merge_adapters([a, b], "lego", k=64)
    (tmp_path / "run-1.json").unlink()
    with pytest.raises(AdapterFileError, match="no result JSON"):
        merge_adapters([a, b], "concat")
    assert cli.main(["merge", str(b), "--method", "concat", "--out", str(tmp_path / "o"), "--no-eval"]) == 2


GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


@pytest.mark.skipif(not (GLUE / "RTE").is_dir(), reason=f"GLUE data not found at {GLUE}")
def test_the_command_evaluates_each_task_merged_own_and_without_adapter(tmp_path, capsys):
    from lorabench.config import RunConfig
    from lorabench.run import execute

    tiny = {"model": "minilm", "layers": 2, "train_limit": 32, "eval_limit": 32, "max_length": 32, "epochs": 1,
            "batch_size": 8, "lr": 5e-3, "data_dir": str(GLUE), "quiet": True, "save_adapter": True, "r": 4,
            "out": str(tmp_path / "runs")}
    dirs = [tmp_path / "runs" / f"run-{execute(RunConfig.from_dict(tiny | {'task': t}), progress=False)['run_id']}-adapter"
            for t in ("sst2", "rte")]
    out = tmp_path / "merged"
    assert cli.main(["merge", *map(str, dirs), "--method", "ties", "--out", str(out), "--eval-limit", "16",
                     "--data-dir", str(GLUE)]) == 0
    record = json.loads((out / "merge.json").read_text())
    assert record["method"] == "ties" and record["rank"] == 4 and set(record["tasks"]) == {"sst2", "rte"}
    for task, t in record["tasks"].items():
        for kind in ("own", "merged", "no_adapter"):
            assert 0.0 <= t[kind]["validation"]["accuracy"] <= 1.0, (task, kind)
    assert "merged - own" in capsys.readouterr().out and (out / "merge.md").is_file()
    assert (out / "sst2" / "lorabench_adapter.safetensors").is_file()


def test_the_merge_glue_preset_trains_one_saved_lora_per_task():
    from lorabench import sweep

    s = sweep.load_sweep("merge-glue")
    assert sorted(r.config.task for r in s.runs) == ["cola", "mrpc", "rte", "sst2", "stsb"]
    assert {(r.config.variant, r.config.save_adapter, r.config.model) for r in s.runs} == {("lora", True, "minilm")}
