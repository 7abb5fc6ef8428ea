"""A packed run's dropout (``lorabench.pack.noise``) draws bit for bit what the run draws alone.

The attention replica equals SDPA with dropout (forward and gradients, same seed) on this CPU;
a run's rows spread over chunks of another width get the rows and columns of its own mask; a
dropout input the pack cannot map to tokens is refused with the fix.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from lorabench.errors import ConfigError
from lorabench.pack.layers import Segments
from lorabench.pack.noise import PackNoise, packed_attention


def _attention_inputs(n=3, h=4, t=7, d=8):
    torch.manual_seed(0)
    q, k, v = (torch.randn(n, h, t, d, requires_grad=True) for _ in range(3))
    mask = torch.zeros(n, 1, t, t)
    mask[0, ..., 5:] = torch.finfo(torch.float32).min  # row 0: two padded keys
    return q, k, v, mask


def test_packed_attention_with_dropout_is_sdpa_with_the_runs_own_draws():
    q, k, v, mask = _attention_inputs()
    torch.manual_seed(5)  # alone: the global generator, as set_seed leaves it
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.1, scale=0.3)
    want_grads = torch.autograd.grad(want.square().sum(), (q, k, v))

    noise = PackNoise([5])
    pack = SimpleNamespace(noise=noise, segments=Segments([0], [3], 7))
    module = SimpleNamespace(training=True, is_causal=False, lorabench_pack=pack)
    got, _ = packed_attention(module, q, k, v, mask, dropout=0.1, scaling=0.3)
    got = got.transpose(1, 2)  # transformers' layout (N, T, h, d) back to SDPA's
    got_grads = torch.autograd.grad(got.square().sum(), (q, k, v))
    assert torch.equal(got, want)
    assert all(torch.equal(a, b) for a, b in zip(got_grads, want_grads))


def test_a_runs_rows_in_narrower_chunks_get_the_rows_and_columns_of_its_own_mask():
    x = torch.ones(4, 6, 5)  # the run alone: 4 rows, 6 tokens
    whole = PackNoise([3])
    full = whole.noise(x, 0.5, Segments([0], [4], 6))
    chunked = PackNoise([3])
    chunked.new_micro_batch()
    first = chunked.noise(torch.ones(2, 4, 5), 0.5, Segments([0], [2], 4, [(torch.tensor([1, 3]), (4, 6))]))
    chunked.new_forward()  # the next chunk: the same call draws nothing new
    second = chunked.noise(torch.ones(2, 8, 5), 0.5, Segments([0], [2], 8, [(torch.tensor([0, 2]), (4, 6))]))
    assert torch.equal(first, full[[1, 3], :4])
    assert torch.equal(second[:, :6], full[[0, 2]])  # past its own 6 tokens: padding, kept as is
    assert torch.equal(second[:, 6:], torch.full((2, 2, 5), 2.0))  # kept, scaled like a kept token
    assert set(full.unique().tolist()) == {0.0, 2.0}


def test_two_runs_in_one_batch_each_draw_from_their_own_generator():
    x = torch.ones(5, 3, 4)
    both = PackNoise([0, 1]).noise(x, 0.2, Segments([0, 1], [2, 3], 3))
    alone = [PackNoise([s]).noise(torch.ones(n, 3, 4), 0.2, Segments([0], [n], 3)) for s, n in ((0, 2), (1, 3))]
    assert torch.equal(both, torch.cat(alone))
    torch.manual_seed(1)  # what the run of seed 1 draws alone through at::dropout
    assert torch.equal(both[2:], F.dropout(torch.ones(3, 3, 4), 0.2))


def test_a_dropout_input_that_does_not_run_along_the_tokens_is_refused():
    with pytest.raises(ConfigError, match="--pack 1"):
        PackNoise([0]).noise(torch.ones(2, 5, 4), 0.1, Segments([0], [2], 6))
    with pytest.raises(ConfigError, match="--model-dropout 0"):
        PackNoise([0]).noise(torch.ones(2, 3, 4, 4, 4), 0.1, Segments([0], [2], 4))
