"""One shared encoder, one head per task: the model of a multi-task run.

    logits = W_task dropout(mean_t m_t h_t / sum_t m_t) + b_task       (h: last hidden states)

The encoder's mean pooling is ``heads.MeanPoolClassifier``'s; each task keeps its own linear head
(C outputs, 1 for a regression task) and its own loss (``heads.task_loss``), so a batch of one
task trains that task's head and the shared encoder only. The backbone keeps its attribute name
(``bert`` ...), so layer names are those of a single-task lorabench model and single-task
adapters load onto it by name (``frozen.load_experts``).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from ..heads import task_loss


class MultiTaskModel(nn.Module):
    def __init__(self, prefix: str, backbone: nn.Module, tasks: dict, dropout: float = 0.0):
        """``tasks``: {name: TaskSpec} in the run's order."""
        super().__init__()
        self.prefix = prefix
        setattr(self, prefix, backbone)
        self.specs = dict(tasks)
        self.dropout = nn.Dropout(dropout)
        hidden = backbone.config.hidden_size
        std = getattr(backbone.config, "initializer_range", 0.02)
        self.heads = nn.ModuleDict()
        for name, spec in self.specs.items():
            head = nn.Linear(hidden, spec.num_labels)
            nn.init.normal_(head.weight, std=std)
            nn.init.zeros_(head.bias)
            self.heads[name] = head.to(next(backbone.parameters()).dtype)
        self.routing = None  # experts.RoutingState when the layers are routed experts
        self.routers = nn.ModuleDict()

    @property
    def backbone(self) -> nn.Module:
        return getattr(self, self.prefix)

    @property
    def config(self):
        return self.backbone.config

    def forward(self, task: str, input_ids, attention_mask=None, labels=None, token_type_ids=None,
                reduction: str = "mean", **ignored) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.routing is not None:
            self.routing.begin(attention_mask, task)
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               **kwargs).last_hidden_state  # (B, T, H)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, H)
        logits = self.heads[task](self.dropout(pooled))  # (B, C)
        loss = None
        if labels is not None:
            loss = task_loss(logits, labels, self.specs[task].is_regression, reduction=reduction)
        return SequenceClassifierOutput(loss=loss, logits=logits)
