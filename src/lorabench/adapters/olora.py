"""OLoRA: LoRA initialised with the QR decomposition of W.

Registers the init ``"olora"`` (usable with any LoRA-family variant: ``init="olora"``)
and the variant ``olora`` (LoRA whose default init is ``"olora"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .registry import register
from .lora import LoRA, LoRAOptions, register_init


@register_init("olora", factorises_weight=True, residual=True)
def _olora(v: LoRA, W: torch.Tensor) -> None:
    # Büyükakyüz 2024, Sec. 3: W = QR; B = Q[:, :r], A = R[:r]; W_res = W - s B A.
    # Unlike PiSSA the scale is not folded into the factors (PEFT's olora_init does the
    # same), so B keeps orthonormal columns and s B A = s Q_r R_r. QR runs in fp32.
    Q, R = torch.linalg.qr(W.float())  # (out, k), (k, in), k = min(out, in)
    r = v.opts.r
    with torch.no_grad():
        v.lora_A.copy_(R[:r])  # (r, in)
        v.lora_B.copy_(Q[:, :r])  # (out, r)
    v.keep_init_factors()  # the frozen base becomes W - s B0 A0 (LoRA.base_offset)


@register("olora")
class OLoRA(LoRA):
    """OLoRA: Orthonormal Low-Rank Adaptation of Large Language Models.
    Büyükakyüz 2024, arXiv 2406.01775.

        W = Q R;  B0 = Q[:, :r],  A0 = R[:r];  h = (W - s B0 A0) x + s B A x

    B starts with orthonormal columns spanning W's leading column space; the residual
    stays frozen, so the output is unchanged at init.
    """

    description = "OLoRA: LoRA initialised from the QR decomposition of W, residual frozen (Büyükakyüz 2024, arXiv 2406.01775)"

    @dataclass
    class Options(LoRAOptions):
        init: str = "olora"
