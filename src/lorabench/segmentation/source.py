"""The source-pretrained U-Net: trained once on synthetic membranes, cached as safetensors.

    state, record = pretrained(settings, device, amp)   # {name: tensor}, {"key", "steps", "loss", ...}

The cache key is the SHA-256 of the source settings (``SegmentSettings.source``: architecture,
patch, loss, steps, batch, lr, seed) and ``GENERATOR``, the version of the synthetic images; the
file is ``<cache>/unet-source-<key>.safetensors`` with its record beside it as JSON (``$LORABENCH_CACHE``
or ``~/.cache/lorabench``, folder ``segmentation``). Pretraining is seeded (``source_seed``: the
weights and every synthetic batch), so a cache miss on another machine rebuilds the same model up to
the floating-point order of the CPU's kernels; the record keeps the file's SHA-256, and every run
records the key and that checksum, so two results are known to share a source model.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from .. import ids, results
from ..errors import DataError
from ..training.meter import Meter
from .loop import fit
from .settings import SegmentSettings
from .synthetic import membranes
from .unet import UNet, UNetShape

GENERATOR = 1  #: bump when ``synthetic.membranes`` changes the images it draws


def cache_dir() -> Path:
    root = os.environ.get("LORABENCH_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "lorabench") / "segmentation"


def source_key(s: SegmentSettings) -> str:
    return ids.run_id({**s.source(), "generator": GENERATOR, "norm": "group"}, None)


def source_batches(s: SegmentSettings, generator: torch.Generator):
    """``source_steps`` batches of fresh synthetic patches (foreground as the target's)."""
    for _ in range(s.source_steps):
        x, y = membranes(s.source_batch, s.patch, generator)
        yield x, (y if s.foreground == "dark" else 1 - y)


def pretrain(s: SegmentSettings, device: torch.device, amp: torch.dtype | None,
             progress: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train the source U-Net from ``source_seed``: (state dict on the CPU, record)."""
    torch.manual_seed(s.source_seed)
    model = UNet(UNetShape(s.base, s.depth, s.groups)).to(device)
    generator = torch.Generator().manual_seed(s.source_seed)
    meter = Meter(device)
    groups = [{"params": [p for p in model.parameters()], "lr": s.source_lr, "weight_decay": 0.0}]
    say = (lambda m: print(f"source pretraining: {m}", flush=True)) if progress else None
    out = fit(model, [lambda: source_batches(s, generator)], groups, steps=s.source_steps, device=device, amp=amp,
              meter=meter, loss=s.loss, warmup_ratio=0.05, log_every=max(1, s.source_steps // 20), progress=say)
    if out.status != "ok":
        raise RuntimeError(f"source pretraining {out.status}: {out.error}")
    record = {"settings": s.source(), "generator": GENERATOR, "steps": out.steps, "loss": out.train_loss,
              "train_s": meter.time()["train_s"], "threads": torch.get_num_threads(), "device": device.type}
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, record


def pretrained(s: SegmentSettings, device: torch.device, amp: torch.dtype | None,
               progress: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The cached source model of ``s`` (pretrained now on a miss): (state dict, record with
    ``key``, ``sha256``, ``cached`` (found in the cache) and ``path``)."""
    from safetensors.torch import load_file, save_file

    key = source_key(s)
    path = cache_dir() / f"unet-source-{key}.safetensors"
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file():
        try:
            record = json.loads(meta.read_text())
            state = load_file(str(path))
        except (OSError, ValueError) as e:
            raise DataError(f"cached source model {path} is unreadable ({e}); delete it to pretrain again") from None
        cached = True
    else:
        state, record = pretrain(s, device, amp, progress)
        path.parent.mkdir(parents=True, exist_ok=True)
        results.atomic_write_bytes(path, lambda tmp: save_file(state, tmp))
        record["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        results.write_json_atomic(meta, record)
        cached = False
    return state, {**record, "key": key, "cached": cached, "path": str(path)}


def zero_shot(record: dict[str, Any], data: dict, test: list[str], score) -> dict[str, float]:
    """The source model's test scores before any fine-tuning (the paper's "no fine-tuning" row):
    ``score()`` once per (source model, data fingerprint, test images), then read from the cache."""
    key = ids.run_id({"source": record["key"], "sha256": record.get("sha256"), "test": test}, data)
    path = cache_dir() / f"unet-source-{record['key']}.zero-shot-{key}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass  # unreadable: measured again and rewritten
    scores = score()
    results.write_json_atomic(path, scores)
    return scores

