"""BD-LoRA (variant ``bd_lora``): the block-diagonal factor is block-diagonal by construction and stays so
under training, the forward equals a hand-written dense computation, each tensor-parallel shard computes
its part from its own blocks alone (the paper's point: no extra communication), the parameter count
follows the formula and reproduces the abstract's ratios, bad block counts are refused, and the PEFT
export (a dense LoRA with zeros off the blocks) round-trips exactly."""

from __future__ import annotations

import pytest
import torch

import lorabench
from lorabench import VariantError
from lorabench.adapters.bd_lora import BDLoRA, parallel_mode
from lorabench.commands.variants import describe_variants
from lorabench.inject import adapted_layers

from conftest import TARGETS, make_batch, outputs, train_steps

R = 4


def bd(model, **opts):
    opts = {"r": R, "blocks": 2, **opts}
    return lorabench.apply(model, "bd_lora", targets=TARGETS["bert"], **opts)


def randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in adapted_layers(model):
            for p in (layer.adapter.lora_A, layer.adapter.lora_B):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))


def dense_by_hand(a) -> tuple[torch.Tensor, torch.Tensor]:
    """(A (r, in), B (out, r)) written out block by block with explicit zeros."""
    n, r = a.opts.blocks, a.opts.r
    k = r // n
    if a.opts.parallel == "row":
        A, m = torch.zeros(r, a.in_features), a.in_features // n
        for i in range(n):
            A[i * k:(i + 1) * k, i * m:(i + 1) * m] = a.lora_A.detach()[i * k:(i + 1) * k]
        return A, a.lora_B.detach()
    B, o = torch.zeros(a.out_features, r), a.out_features // n
    for i in range(n):
        B[i * o:(i + 1) * o, i * k:(i + 1) * k] = a.lora_B.detach()[i * o:(i + 1) * o]
    return a.lora_A.detach(), B


def off_diagonal(M: torch.Tensor, n: int) -> torch.Tensor:
    rows, cols = M.shape[0] // n, M.shape[1] // n
    mask = torch.ones_like(M, dtype=torch.bool)
    for i in range(n):
        mask[i * rows:(i + 1) * rows, i * cols:(i + 1) * cols] = False
    return M[mask]


def test_default_mapping_by_name_and_override(bert):
    model = bd(bert)
    modes = {n: layer.adapter.opts.parallel for n, layer in adapted_layers(model)}
    p = "bert.encoder.layer.0."
    assert modes[p + "attention.self.query"] == modes[p + "attention.self.value"] == "column"
    assert modes[p + "intermediate.dense"] == "column"  # BERT's MLP up projection
    assert modes[p + "attention.output.dense"] == modes[p + "output.dense"] == "row"
    for name in ("q_proj", "k_proj", "v_proj", "up_proj", "gate_proj", "key"):
        assert parallel_mode("auto", f"model.layers.0.{name}") == "column"
    for name in ("o_proj", "down_proj", "out_proj", "attention.output.dense"):
        assert parallel_mode("auto", f"model.layers.0.{name}") == "row"
    assert parallel_mode("intermediate.dense:row", p + "intermediate.dense") == "row"  # the user's rule first
    assert parallel_mode("row", p + "attention.self.query") == "row"
    with pytest.raises(VariantError, match=r"layer 'model.mystery'.*parallel='mystery:column'"):
        parallel_mode("auto", "model.mystery")
    assert "bd_lora" in describe_variants() and "deviations" in describe_variants()


@pytest.mark.parametrize("blocks", [2, 4])
def test_off_diagonal_blocks_are_zero_and_stay_zero_under_training(bert, blocks):
    model = bd(bert, blocks=blocks)
    randomize(model)
    before = {n: (v.adapter.lora_A.detach().clone(), v.adapter.lora_B.detach().clone()) for n, v in adapted_layers(model)}
    train_steps(model, make_batch(), lr=1e-2)
    for name, layer in adapted_layers(model):
        a = layer.adapter
        A, B = a.dense_factors()
        constrained = A if a.opts.parallel == "row" else B
        # only the diagonal blocks exist as parameters: (r, in/N) or (out, r/N)
        assert (a.lora_A.shape, a.lora_B.shape) == (((R, a.in_features // blocks), (a.out_features, R))
                                                    if a.opts.parallel == "row" else
                                                    ((R, a.in_features), (a.out_features, R // blocks)))
        assert constrained.shape == ((R, a.in_features) if a.opts.parallel == "row" else (a.out_features, R))
        assert torch.count_nonzero(off_diagonal(constrained.detach(), blocks)) == 0, name
        assert not torch.equal(a.lora_A, before[name][0]) and not torch.equal(a.lora_B, before[name][1]), name
        torch.testing.assert_close(a.delta_weight().detach(), a.scale * (dense_by_hand(a)[1] @ dense_by_hand(a)[0]),
                                   atol=1e-6, rtol=0)


@pytest.mark.parametrize("parallel", ["column", "row", "auto"])
def test_forward_and_merge_equal_the_dense_computation(bert, parallel):
    model = bd(bert, blocks=4, alpha=6.0, parallel=parallel)
    randomize(model, seed=1)
    for name, layer in adapted_layers(model):
        a = layer.adapter
        A, B = dense_by_hand(a)
        x = torch.randn(2, 3, a.in_features)
        W, bias = layer.weight.detach(), layer.base_layer.bias.detach()
        expected = x @ W.t() + bias + (6.0 / R) * (x @ A.t()) @ B.t()
        with torch.no_grad():
            torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(a.merged_weight(W), W + (6.0 / R) * B @ A, atol=1e-6, rtol=0)


def test_each_tensor_parallel_shard_needs_only_its_own_blocks(bert):
    n = 4
    model = bd(bert, blocks=n)
    randomize(model, seed=2)
    layers = dict(adapted_layers(model))
    x = torch.randn(5, 32)
    k = R // n
    with torch.no_grad():
        # column-parallel (query): shard i holds W0's output rows i, A's rank rows i and B_i; input x replicated
        layer = layers["bert.encoder.layer.0.attention.self.query"]
        a, W, b = layer.adapter, layer.weight, layer.base_layer.bias
        full, o = layer(x), a.out_features // n
        for i in range(n):
            rows, ranks = slice(i * o, (i + 1) * o), slice(i * k, (i + 1) * k)
            shard = x @ W[rows].t() + b[rows] + a.scale * (x @ a.lora_A[ranks].t()) @ a.lora_B[rows].t()
            torch.testing.assert_close(shard, full[:, rows], atol=1e-5, rtol=0)
        # row-parallel (attention.output.dense): shard i holds W0's input columns i, A_i and B's rank columns i;
        # the partial sums meet in the all-reduce the base layer needs anyway: no extra communication
        layer = layers["bert.encoder.layer.0.attention.output.dense"]
        a, W, b = layer.adapter, layer.weight, layer.base_layer.bias
        m = a.in_features // n
        partial = []
        for i in range(n):
            cols, ranks = slice(i * m, (i + 1) * m), slice(i * k, (i + 1) * k)
            xi = x[:, cols]  # shard i's input: the output slice of the column-parallel layer before it
            partial.append(xi @ W[:, cols].t() + a.scale * (xi @ a.lora_A[ranks].t()) @ a.lora_B[:, ranks].t())
        torch.testing.assert_close(sum(partial) + b, layer(x), atol=1e-5, rtol=0)


def test_parameter_count_formula_and_the_papers_ratios(llama):
    model = lorabench.apply(llama, "bd_lora", targets=TARGETS["llama"] + ["o_proj", "up_proj"], r=8, blocks=4)
    trainable, _ = lorabench.count_parameters(model)
    layers = list(adapted_layers(model))
    head = sum(p.numel() for p in model.score.parameters())
    per_layer = {n: v.adapter.opts.parallel for n, v in layers}
    assert per_layer["model.layers.0.self_attn.k_proj"] == "column" and per_layer["model.layers.0.mlp.down_proj"] == "row"
    counted = 0
    for name, layer in layers:
        a = layer.adapter
        n_params = sum(p.numel() for p in a.parameters())
        i, o = a.in_features, a.out_features
        assert n_params == BDLoRA.num_trainable_formula(i, o, a.opts)
        assert n_params == (8 * i // 4 + 8 * o if a.opts.parallel == "row" else 8 * i + 8 * o // 4), name
        counted += n_params
    assert trainable == counted + head
    # Abstract (Llama-3.1-70B, 8 GPUs): "0.87x (1.74x) the number of adapter parameters": BD-LoRA at 2x (4x)
    # LoRA's rank with blocks = 8, on q, k, v, gate, up (column) and o, down (row) of every layer
    h, kv, ff = 8192, 1024, 28672
    shapes = [(h, h, "column"), (h, kv, "column"), (h, kv, "column"), (h, ff, "column"), (h, ff, "column"),
              (h, h, "row"), (ff, h, "row")]
    lora = sum(8 * (i + o) for i, o, _ in shapes)
    opts = {r: [BDLoRA.make_options(r=r, blocks=8, parallel=mode) for *_, mode in shapes] for r in (16, 32)}
    ratio = {r: sum(BDLoRA.num_trainable_formula(i, o, op) for (i, o, _), op in zip(shapes, ops)) / lora
             for r, ops in opts.items()}
    assert round(ratio[16], 2) == 0.87 and round(ratio[32], 2) == 1.74
    r = BDLoRA.lora_matched_rank(shapes, 8, 8)
    assert r % 8 == 0 and r == 24  # the smallest multiple of 8 with at least LoRA's (r=8) parameter count
    assert sum(BDLoRA.num_trainable_formula(i, o, BDLoRA.make_options(r=r, blocks=8, parallel=m)) for i, o, m in shapes) >= lora


@pytest.mark.parametrize("opts, match", [
    ({"r": 6, "blocks": 4}, r"r=6 is not a multiple of blocks=4.*choose r = 4 or 8"),
    ({"r": 4, "blocks": 0}, r"blocks must be a positive integer"),
    ({"r": 6, "blocks": 3}, r"layer 'bert\.encoder\.layer\.0\.attention\.self\.query' is column-parallel, so its output "
                            r"size 32 is cut into blocks=3 shards.*choose blocks dividing 32"),
    ({"r": 64, "blocks": 2}, r"r=64 is larger than min\(in, out\) = 32"),
    ({"r": 4, "blocks": 2, "parallel": "query:diagonal"}, r"entry 'query:diagonal' is not SUFFIX:column"),
])
def test_bad_block_counts_are_refused(bert, opts, match):
    with pytest.raises(VariantError, match=match):
        lorabench.apply(bert, "bd_lora", targets=TARGETS["bert"], **opts)
    assert getattr(bert, "lorabench_state", None) is None  # nothing was changed


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_peft_export_is_an_exact_dense_lora(make_model, tmp_path):
    peft = pytest.importorskip("peft")
    model = bd(make_model("bert"))
    randomize(model, seed=3)
    train_steps(model, make_batch())
    lorabench.export_peft(model, tmp_path)
    theirs = peft.PeftModel.from_pretrained(make_model("bert"), tmp_path).eval()
    torch.testing.assert_close(outputs(theirs, make_batch()), outputs(model, make_batch()), atol=1e-6, rtol=0)
    for name, layer in adapted_layers(model):
        pl = theirs.base_model.model.get_submodule(name)
        A, B = dense_by_hand(layer.adapter)
        assert torch.equal(pl.lora_A["default"].weight, A), name
        assert torch.equal(pl.lora_B["default"].weight, layer.adapter.scale * B), name  # zeros off the blocks
    loaded = lorabench.load_peft(make_model("bert"), tmp_path)  # read back as a plain LoRA
    torch.testing.assert_close(outputs(loaded, make_batch()), outputs(model, make_batch()), atol=1e-6, rtol=0)
