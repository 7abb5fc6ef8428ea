"""lorabench's own task heads: label words after a prompt for decoder-only models
(``PromptClassifier``) and a classifier on the masked mean of the last hidden states
(``MeanPoolClassifier``, how sentence-transformers models are meant to be read)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from .errors import ModelError


class PromptClassifier(nn.Module):
    """A causal LM as a classifier over label words (verbalizer; Schick & Schuetze 2021, arXiv 2001.07676).

    logits_c = (W_lm h_t)[v_c] with h_t the last real position (right padding) and v_c the
    first token of label word c; loss = CE over the full vocabulary with target v_y, so
    the model is trained on the label token only, as the LM it already is.
    """

    pooling = "lm"
    #: an output-space loss term against forgetting (``lorabench.regularizers.attach``), or None
    regularizer = None

    def __init__(self, causal_lm: nn.Module, label_token_ids: list[int]):
        super().__init__()
        ids = torch.as_tensor(label_token_ids, dtype=torch.long)
        vocab = causal_lm.get_output_embeddings().weight.shape[0]
        distinct = ids.ndim == 1 and len(ids) >= 2 and len(set(ids.tolist())) == len(ids)
        if not distinct or not 0 <= ids.min() <= ids.max() < vocab:
            raise ModelError(f"label_token_ids must be >= 2 distinct ids in [0, {vocab}), got {label_token_ids}")
        self.causal_lm = causal_lm
        self.register_buffer("label_token_ids", ids, persistent=False)

    @property
    def config(self):
        return self.causal_lm.config

    @property
    def num_labels(self) -> int:
        return len(self.label_token_ids)

    def forward(self, input_ids, attention_mask=None, labels=None, **ignored) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        vocab_logits = label_position_logits(self.causal_lm, input_ids, attention_mask)  # (B, V)
        logits = vocab_logits[:, self.label_token_ids]  # (B, C)
        loss = None
        if labels is not None:
            target = self.label_token_ids[labels.long()]  # (B,)
            loss = F.cross_entropy(vocab_logits.float(), target)
            if self.regularizer is not None:  # e.g. mask_target: a KL to the base off the target token
                loss = loss + self.regularizer(vocab_logits, target, input_ids, attention_mask)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def label_position_logits(causal_lm: nn.Module, input_ids, attention_mask) -> torch.Tensor:
    """The LM's next-token logits at the last real position (right padding): (B, V).
    The LM head runs on B positions, not B*T: (B, V) instead of (B, T, V) logits."""
    out = causal_lm.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    hidden = out.last_hidden_state  # (B, T, H)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
    last = (positions * attention_mask.to(positions.dtype)).argmax(-1)  # (B,) last real token
    h = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, H)
    vocab_logits = causal_lm.get_output_embeddings()(h)  # (B, V)
    cap = getattr(causal_lm.config, "final_logit_softcapping", None)  # Gemma 2
    if cap:
        vocab_logits = torch.tanh(vocab_logits / cap) * cap
    return vocab_logits


class MeanPoolClassifier(nn.Module):
    """Sequence classification of the mean of the last hidden states over the real tokens.

        pooled = sum_t m_t h_t / sum_t m_t        (m: attention mask, h: last hidden states)
        logits = W dropout(pooled) + b

    Sentence-embedding checkpoints (Sentence-BERT, Reimers & Gurevych 2019, arXiv 1908.10084;
    all-MiniLM-L6-v2 among them) are trained to be read this way; their [CLS] pooler is a
    leftover of pre-training. The backbone keeps its attribute name (``bert``, ``model`` ...), so
    adapted layers have the same names as in the model's own classification head; its unused
    pooler is dropped. The head is ``classifier`` (or the model's ``score`` linear), trained
    with the adapter; loss as ``problem_type`` says (MSE for regression, else cross-entropy).
    """

    pooling = "mean"

    def __init__(self, clf: nn.Module):
        super().__init__()
        config = clf.config
        self.prefix = clf.base_model_prefix
        backbone = clf.base_model
        if getattr(backbone, "pooler", None) is not None:
            backbone.pooler = None  # BertModel skips a None pooler
        setattr(self, self.prefix, backbone)
        p = getattr(config, "classifier_dropout", None)
        p = getattr(config, "hidden_dropout_prob", 0.0) if p is None else p
        self.dropout = nn.Dropout(p or 0.0)
        own = getattr(clf, "score", None)
        if isinstance(own, nn.Linear):  # decoders: a linear score head, kept under its name
            self.score = own
        else:
            self.classifier = nn.Linear(config.hidden_size, config.num_labels)
            nn.init.normal_(self.classifier.weight, std=getattr(config, "initializer_range", 0.02))
            nn.init.zeros_(self.classifier.bias)
            self.classifier.to(next(backbone.parameters()).dtype)

    @property
    def config(self):
        return getattr(self, self.prefix).config

    @property
    def head(self) -> nn.Linear:
        return self.score if hasattr(self, "score") else self.classifier

    def forward(self, input_ids, attention_mask=None, labels=None, token_type_ids=None,
                **ignored) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = getattr(self, self.prefix)(input_ids=input_ids, attention_mask=attention_mask,
                                            **kwargs).last_hidden_state  # (B, T, H)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, H)
        logits = self.head(self.dropout(pooled))  # (B, C)
        loss = None
        if labels is not None:
            loss = task_loss(logits, labels, self.config.problem_type == "regression")
        return SequenceClassifierOutput(loss=loss, logits=logits)


def task_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool, reduction: str = "mean") -> torch.Tensor:
    """The training loss of a classification head, in fp32: MSE on the one output for regression
    (STS-B), else cross-entropy; ``reduction="none"`` gives one value per row (``lorabench.pack``)."""
    if regression:
        return F.mse_loss(logits.squeeze(-1).float(), labels.float(), reduction=reduction)
    return F.cross_entropy(logits.float(), labels.long(), reduction=reduction)
