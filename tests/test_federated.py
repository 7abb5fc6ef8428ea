"""lorabench federate: the client split, the four server aggregations against their formulas,
bytes counted, and an end-to-end federated run on a 2-layer MiniLM."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lorabench.commands import federate
from lorabench.commands.args import Parser
from lorabench.errors import ConfigError, DataError
from lorabench.federated import (
    FedSettings,
    dirichlet_split,
    get,
    label_histograms,
    sample_clients,
)
from lorabench.federated.fedsmooth import (
    FedSmoothOptions,
    gradient_aligned,
    truncated_svd,
    zeta_at,
)
from lorabench.federated.lora_fair import cosine_correction
from lorabench.federated.plot import curves, plot_rounds
from lorabench.federated.simulate import aggregation_error, nbytes
from lorabench.federated.table import read_records, round_table, summary_table

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def cli(argv):
    p = Parser(prog="lorabench")
    p.add_argument("--debug", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    federate.add_parser(sub)
    args = p.parse_args(argv)
    return int(args.func(args) or 0)


def random_uploads(n=3, out=12, inp=10, r=4, seed=0, shared_a=False):
    g = torch.Generator().manual_seed(seed)
    A0 = torch.randn(r, inp, generator=g)
    ups = []
    for _ in range(n):
        A = A0 if shared_a else torch.randn(r, inp, generator=g)
        ups.append({"layer": (torch.randn(out, r, generator=g), A)})
    return ups


def ideal(ups, p):
    return sum(w * u["layer"][0] @ u["layer"][1] for u, w in zip(ups, p))


# ---- the split ------------------------------------------------------------------------------
def test_dirichlet_split_keeps_every_example_once_and_skews_with_small_beta():
    n, k = 20_000, 10
    labels = np.random.default_rng(1).integers(0, 4, n).tolist()
    for beta in (0.05, 1.0, math.inf):
        parts = dirichlet_split(labels, k, beta, seed=0)
        assert sorted(i for p in parts for i in p) == list(range(n))  # none lost, none twice
    hist = np.array(label_histograms(labels, dirichlet_split(labels, k, 0.05, seed=0)), dtype=float)
    share = hist / hist.sum(1, keepdims=True)  # (clients, classes)
    assert share.max(1).mean() > 0.8  # beta = 0.05: each client mostly one class
    iid = dirichlet_split(labels, k, math.inf, seed=0)
    assert {len(p) for p in iid} == {n // k}  # equal parts
    share = np.array(label_histograms(labels, iid), dtype=float) / (n // k)
    assert np.abs(share - 0.25).max() < 0.05  # every client near the global mix (1/4 each)
    assert dirichlet_split(labels, k, 0.5, seed=3) == dirichlet_split(labels, k, 0.5, seed=3)


def test_clients_sampled_per_round_are_seeded_and_distinct():
    a = sample_clients(10, 0.5, round_index=2, seed=0)
    assert len(a) == 5 and len(set(a)) == 5 and a == sorted(a) and a == sample_clients(10, 0.5, 2, 0)
    assert sample_clients(10, 1.0, 0, 0) == list(range(10)) and len(sample_clients(10, 0.01, 0, 0)) == 1


@pytest.mark.parametrize("kw, needle", [({"beta": 0}, "--beta"), ({"beta": -1}, "--beta"), ({"fraction": 0}, "--fraction"),
                                        ({"fraction": 1.5}, "--fraction"), ({"clients": 0}, "--clients"),
                                        ({"rounds": 0}, "--rounds"), ({"method": "fedprox"}, "fedavg"),
                                        ({"options": {"lam": -1}, "method": "lora_fair"}, "lam")])
def test_bad_federated_settings_raise(kw, needle):
    with pytest.raises(ConfigError, match=needle):
        FedSettings(**{"method": "fedavg", **kw})


# ---- the aggregations -----------------------------------------------------------------------
def test_fedavg_averages_each_factor_and_its_error_is_the_product_gap():
    ups, p = random_uploads(), [0.2, 0.3, 0.5]
    new = get("fedavg")().aggregate(ups, p)
    B = sum(w * u["layer"][0] for u, w in zip(ups, p))
    A = sum(w * u["layer"][1] for u, w in zip(ups, p))
    assert torch.allclose(new["layer"][0], B) and torch.allclose(new["layer"][1], A)
    err = aggregation_error(ups, p, new)
    assert err == pytest.approx(float((ideal(ups, p) - B @ A).norm()), rel=1e-5) and err > 0.1


def test_ffa_lora_aggregation_is_exact():
    ups, p = random_uploads(shared_a=True), [0.2, 0.3, 0.5]
    new = get("ffa_lora")().aggregate(ups, p)
    assert aggregation_error(ups, p, new) < 1e-5
    assert get("ffa_lora").sends_up == ("B",) and get("ffa_lora").variant == "ffa_lora"


def solvable_uploads(p, r=4, out=12, inp=10):
    """A_i = M_i A0: every A_i (and A_bar) spans A0's rows, so B' A_bar = sum p_i B_i A_i is solvable."""
    g = torch.Generator().manual_seed(5)
    A0 = torch.randn(r, inp, generator=g)
    return [{"layer": (torch.randn(out, r, generator=g), torch.randn(r, r, generator=g) @ A0)} for _ in p]


def test_lora_fair_frobenius_correction_is_exact_when_solvable_and_reduces_the_error_otherwise():
    p = [0.2, 0.3, 0.5]
    ups = solvable_uploads(p)
    fedavg = aggregation_error(ups, p, get("fedavg")().aggregate(ups, p))
    fair = get("lora_fair")
    exact = aggregation_error(ups, p, fair(fair.make_options(lam=0.0, objective="frobenius")).aggregate(ups, p))
    assert fedavg > 0.1 and exact < 1e-4 * fedavg
    rand = random_uploads(seed=2)  # rows of sum p_i B_i A_i outside A_bar's row space: not solvable
    base = aggregation_error(rand, p, get("fedavg")().aggregate(rand, p))
    for lam in (0.0, 0.01, 1.0):
        new = fair(fair.make_options(lam=lam, objective="frobenius")).aggregate(rand, p)
        assert 0 < aggregation_error(rand, p, new) < base
        assert torch.equal(new["layer"][1], sum(w * u["layer"][1] for u, w in zip(rand, p)))  # A_bar kept


def test_lora_fair_cosine_correction_aligns_the_direction_and_stays_small():
    p = [0.2, 0.3, 0.5]
    ups = solvable_uploads(p)
    avg = get("fedavg")().aggregate(ups, p)["layer"]
    new = get("lora_fair")().aggregate(ups, p)["layer"]  # the paper's default: 1 - cos, lam = 0.01
    T = ideal(ups, p)

    def cos(W):
        return float((W * T).sum() / (W.norm() * T.norm()))

    assert cos(avg[0] @ avg[1]) < 0.95 and cos(new[0] @ new[1]) > cos(avg[0] @ avg[1]) + 0.02
    assert torch.equal(new[1], avg[1])  # the correction sits on B only
    # batched over layers == one at a time
    B, A = torch.stack([avg[0], 2 * avg[0]]), torch.stack([avg[1], avg[1]])
    dB = cosine_correction(torch.stack([T, T]), B, A, 0.01, 50, 0.01)
    assert torch.allclose(dB[1], cosine_correction(T, 2 * avg[0], avg[1], 0.01, 50, 0.01), atol=1e-6)


def test_fedsmooth_pieces_match_their_formulas():
    g = torch.Generator().manual_seed(0)
    M = torch.randn(16, 12, generator=g)
    B, A = truncated_svd(M, 3)
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    assert torch.allclose(B @ A, U[:, :3] @ torch.diag(S[:3]) @ Vh[:3], atol=1e-5)
    B0, A0 = gradient_aligned(M, 2, gamma=64.0)  # LoRA-GA: A0 = c V[:, :r]^T, B0 = c U[:, r:2r]
    c = 16**0.25 / 8
    assert torch.allclose(A0.abs(), c * Vh[:2].abs(), atol=1e-5) and torch.allclose(B0.abs(), c * U[:, 2:4].abs(), atol=1e-5)
    opts = FedSmoothOptions()
    assert zeta_at(opts, 3, 5, math.inf) == 1.0  # auto: constant for IID
    assert zeta_at(opts, 0, 4, 0.5) == 1.0 and zeta_at(opts, 2, 4, 0.5) == pytest.approx(0.75)  # cosine decay
    ups, p = random_uploads(seed=4), [0.5, 0.25, 0.25]
    new = get("fedsmooth")().aggregate(ups, p)  # rank-r SVD of sum p_i B_i A_i: the error is its tail
    tail = torch.linalg.svdvals(ideal(ups, p))[4:]
    assert aggregation_error(ups, p, new) == pytest.approx(float(tail.norm()), rel=1e-4)


def test_bytes_are_numel_times_element_size():
    assert nbytes({"a": torch.zeros(3, 4), "b": torch.zeros(5, dtype=torch.float16)}) == 3 * 4 * 4 + 5 * 2


def test_tables_come_from_the_records():
    def rec(method, values):
        rounds = [{"metrics": {"validation": {"accuracy": v}}, "aggregation_error": 0.5} for v in values]
        return {"method": method, "federated": {"beta": "inf", "clients": 4, "fraction": 0.5, "rounds": len(values)},
                "primary_metric": "accuracy", "initial": {"metrics": {"validation": {"accuracy": 0.5}}},
                "rounds": rounds, "bytes": {"up": 2**20, "down": 2**21}}
    t = round_table([rec("fedavg", [0.6, 0.7]), rec("ffa_lora", [0.65])])
    assert t.rows == [["0", "50.00", "50.00"], ["1", "60.00", "65.00"], ["2", "70.00", "—"]]
    s = summary_table([rec("fedavg", [0.8, 0.7])])  # the last round: none is picked on the dev split it reports
    assert s.rows[0][1] == "ok" and s.rows[0][4:] == ["2/2", "70.00", "1.00", "2.00", "0.5"]
    bad = summary_table([{**rec("fedavg", [0.8]), "status": "diverged"}])
    assert bad.rows[0][1] == "diverged" and bad.rows[0][5] == "(diverged)"  # never shown as a number


def test_round_curves_plot_the_records(tmp_path):
    def rec(method, beta, values, task="sst2"):
        rounds = [{"metrics": {"validation": {"accuracy": v}}, "aggregation_error": e} for v, e in zip(values, [0.5, 0.0])]
        return {"method": method, "model": "minilm", "task": task, "federated": {"beta": beta}, "primary_metric": "accuracy",
                "initial": {"metrics": {"validation": {"accuracy": 0.5}}}, "rounds": rounds}
    assert curves(rec("fedavg", 0.5, [0.6, 0.7])) == ([0, 1, 2], [50.0, 60.0, 70.0], [0.5, 0.0])
    png, svg = plot_rounds([rec("fedavg", 0.5, [0.6, 0.7]), rec("fedavg", "inf", [0.65]), rec("ffa_lora", 0.5, [0.6])],
                           tmp_path)
    assert png.name == "rounds-minilm-sst2.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and svg.stat().st_size > 0
    with pytest.raises(DataError, match="one model and task"):
        plot_rounds([rec("fedavg", 0.5, [0.6]), rec("fedavg", 0.5, [0.6], task="rte")], tmp_path)


# ---- the command ----------------------------------------------------------------------------
BASE = ["federate", "--model", "minilm", "--layers", "2", "--task", "sst2", "--train-limit", "32", "--eval-limit", "32",
        "--max-length", "32", "--batch-size", "8", "--quiet", "--data-dir", str(GLUE)]


@pytest.mark.parametrize("extra, needle", [(["--clients", "40"], "--clients 40"), (["--beta", "0"], "--beta"),
                                           (["--fraction", "0"], "--fraction"), (["--fraction", "1.5"], "--fraction"),
                                           (["--beta", "many"], "--beta")])
def test_bad_input_errors_before_compute(extra, needle, tmp_path, monkeypatch):
    def no_compute(*a, **k):
        raise AssertionError("simulate ran")
    monkeypatch.setattr(federate.run, "execute", no_compute)
    with pytest.raises(ConfigError, match=needle):
        cli([*BASE, "--method", "fedavg", *extra, "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"GLUE data not found at {GLUE}")
@pytest.mark.parametrize("method", ["ffa_lora", "fedsmooth"])
def test_federate_end_to_end_writes_a_valid_json(method, tmp_path):
    out = tmp_path / method
    assert cli([*BASE, "--method", method, "--clients", "2", "--beta", "0.5", "--rounds", "2", "--fraction", "1",
                "--out", str(out)]) == 0
    [path] = out.glob("run-*.json")  # the kind federated result envelope
    envelope = json.loads(path.read_text())
    assert envelope["schema"] == "lorabench-run" and envelope["kind"] == "federated" and envelope["status"] == "ok"
    assert envelope["method"] == f"federated:{method} (beta 0.5)" and envelope["metric"]["selected_on"] == "last"
    assert envelope["run_id"] == path.stem[4:] and envelope["final"]["metrics"] == envelope["details"]["rounds"][-1]["metrics"]
    assert envelope["time"]["train_s"] > 0 and envelope["memory"]["peak_rss_bytes"] > 0
    [r] = read_records([str(out)])
    assert r["method"] == method
    assert r["federated"] == {"method": method, "clients": 2, "beta": 0.5, "rounds": 2, "local_epochs": 1.0,
                              "fraction": 1.0}
    assert sum(r["split"]["sizes"]) == 32 and [sum(h) for h in r["split"]["label_histograms"]] == r["split"]["sizes"]
    assert len(r["rounds"]) == 2 and all(x["clients"] == [0, 1] for x in r["rounds"])
    assert all(x["sizes"] == r["split"]["sizes"] and sum(x["weights"]) == pytest.approx(1) for x in r["rounds"])
    acc = r["rounds"][-1]["metrics"]["validation"]["accuracy"]
    assert 0 <= acc <= 1 and (out / "federated.md").read_text().count("|") > 10
    # bytes: MiniLM layers 0-1, query and value (384 x 384), r = 8, fp32; the mean-pool head 384 x 2 + 2
    head = (384 * 2 + 2) * 4
    factor = 4 * 8 * 384 * 4  # one factor (A or B) of the 4 adapted layers
    if method == "ffa_lora":  # only B goes up; A comes down once; aggregation exact
        assert all(x["bytes_up"] == 2 * (factor + head) for x in r["rounds"])
        assert [x["bytes_down"] for x in r["rounds"]] == [2 * (2 * factor + head), 2 * (factor + head)]
        assert all(x["aggregation_error"] < 1e-5 for x in r["rounds"])
    else:  # (B, A) both ways, nothing down in round 1; the rank-r SVD of the mean has a tail
        assert all(x["bytes_up"] == 2 * (2 * factor + head) for x in r["rounds"])
        assert [x["bytes_down"] for x in r["rounds"]] == [2 * head, 2 * (2 * factor + head)]
        assert all(x["aggregation_error"] > 0 for x in r["rounds"])
    assert r["bytes"] == {"up": sum(x["bytes_up"] for x in r["rounds"]), "down": sum(x["bytes_down"] for x in r["rounds"])}
    assert cli(["federate", "--table", str(path)]) == 0
    with pytest.raises(ConfigError, match="would write over the input"):  # an input is never written
        cli(["federate", "--table", str(path), "--out", str(path)])
    assert json.loads(path.read_text()) == envelope
    assert cli(["federate", "--table", str(path), "--out", str(tmp_path / "t" / "fed.md")]) == 0
    assert (tmp_path / "t" / "fed.md").is_file() and (tmp_path / "t" / "rounds-minilm-sst2.png").is_file()
