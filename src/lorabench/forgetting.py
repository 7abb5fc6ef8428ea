"""Forgetting of a ``--head lm`` run: how far training moved the decoder's language model on
general text it never trained on (a fixed sample that ships with lorabench).

    base = forgetting.measure_base(model, tokenizer)   # before fit: the adapter is the identity
    fit(model, ...)
    record = forgetting.measure_after(model, base)      # {"text", "sha256", "tokens", "base_ppl", "ppl", "kl"}

On ``TOKENS`` tokens of ``general_text.txt`` (cut into chunks of ``CHUNK`` tokens, fewer when the
model has fewer positions), with the next-token distributions p_base (before training) and p (after):

    ppl = exp(mean_t -log p(x_t | x_<t))            base_ppl: the same under p_base
    kl  = mean_t KL(p_base(. | x_<t) || p(. | x_<t))  (nats per token, over the whole vocabulary)

Every variant is the identity at init (the contract test), so the adapted model before training
*is* the base: its distributions are taken once, before ``fit``, and kept on the CPU
(``tokens x vocabulary`` floats: 400 MB for SmolLM2's 49k vocabulary at 2,048 tokens), so that no
copy of the model is needed. Both passes run in fp32 without autocast, whatever the training
precision, so ``kl`` is 0 and ``ppl == base_ppl`` for an untrained adapter.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from importlib import resources

import torch
import torch.nn.functional as F

TEXT = "general_text.txt"  #: in ``lorabench/data``: ~45 short paragraphs of plain English, written for lorabench
TOKENS = 2048  #: tokens read from the sample (the cost is fixed, whatever the task)
CHUNK = 128  #: tokens per forward pass (or the model's positions, when fewer)
BATCH = 4  #: chunks per forward pass


def sample_text() -> str:
    return resources.files("lorabench.data").joinpath(TEXT).read_text(encoding="utf-8")


def text_ids(tokenizer, positions: int | None = None, tokens: int = TOKENS) -> torch.Tensor:
    """The first ``tokens`` tokens of the sample as (n_chunks, L) ids, L = min(CHUNK, positions);
    the sample is cut into whole chunks (a short remainder is dropped)."""
    ids = tokenizer(sample_text(), add_special_tokens=False)["input_ids"][:tokens]
    length = min(CHUNK, positions or CHUNK)
    n = len(ids) // length
    if n == 0:
        raise ValueError(f"{TEXT} gives {len(ids)} tokens, fewer than one chunk of {length}")
    return torch.tensor(ids[: n * length]).view(n, length)


def positions_of(model) -> int | None:
    config = getattr(model, "config", None)
    n = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return n if isinstance(n, int) and n > 1 else None


@torch.no_grad()
def next_token_log_probs(model, ids: torch.Tensor) -> torch.Tensor:
    """log p(. | x_<t) of the causal LM inside ``model`` (a ``PromptClassifier``) at every position
    but the last: (n_chunks, L - 1, V), fp32, on the CPU."""
    lm = getattr(model, "causal_lm", model)
    device = next(lm.parameters()).device
    was_training = lm.training
    lm.eval()
    out = []
    try:
        for batch in ids.split(BATCH):
            logits = lm(input_ids=batch.to(device), use_cache=False).logits[:, :-1].float()  # (B, L-1, V)
            out.append(F.log_softmax(logits, dim=-1).cpu())
    finally:
        lm.train(was_training)
    return torch.cat(out)


def nll(log_probs: torch.Tensor, ids: torch.Tensor) -> float:
    """Mean negative log-likelihood of the next tokens ``ids[:, 1:]``."""
    return -log_probs.gather(-1, ids[:, 1:, None]).mean().item()


def mean_kl(base_log_probs: torch.Tensor, log_probs: torch.Tensor) -> float:
    """mean over positions of KL(p_base || p) = sum_v p_base(v) (log p_base(v) - log p(v))."""
    return F.kl_div(log_probs, base_log_probs, log_target=True, reduction="none").sum(-1).mean().item()


@dataclass
class Baseline:
    """The base model's next-token distributions on the sample (taken before training)."""

    ids: torch.Tensor  # (n_chunks, L)
    log_probs: torch.Tensor  # (n_chunks, L - 1, V)

    @property
    def tokens(self) -> int:
        return self.ids.shape[0] * (self.ids.shape[1] - 1)  # the predicted tokens


def measure_base(model, tokenizer, tokens: int = TOKENS) -> Baseline:
    """Before training: the adapted model at init (= the base) on the sample, on the GPU if any."""
    if torch.cuda.is_available():
        model.to("cuda")  # fit's accelerator places it there anyway
    ids = text_ids(tokenizer, positions_of(model), tokens)
    return Baseline(ids, next_token_log_probs(model, ids))


def measure_after(model, base: Baseline) -> dict:
    """After training: the ``forgetting`` record of the result JSON."""
    after = next_token_log_probs(model, base.ids)
    digest = hashlib.sha256(sample_text().encode("utf-8")).hexdigest()[:16]
    return {"text": TEXT, "sha256": digest, "tokens": base.tokens,
            "base_ppl": math.exp(nll(base.log_probs, base.ids)), "ppl": math.exp(nll(after, base.ids)),
            "kl": mean_kl(base.log_probs, after)}
