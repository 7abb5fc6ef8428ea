"""Neural Organ Transplantation (NOT): train a block of layers as a standalone, transplantable checkpoint.
Al-Zuraiqi 2026, arXiv 2601.13580 ("Checkpoint-Based Modular Adaptation for Transformer Models").

    organ  = copies of layers[start:end] of the recipient ("donor organ", contiguous)
    model' = layers[:p] + organ + layers[p:]        (inserted before layer p; the rest frozen)
    train the organ alone on the task; save it (organ.safetensors + organ.json); transplant it again

For each position ``p`` of ``positions`` a fresh copy of the organ is inserted and trained with
every other weight frozen, saved, and re-loaded into a fresh recipient (the reload's logits on a
dev batch are compared: ``reload_max_abs_diff``). Baselines on the same data: the recipient alone
(``no_adapter``: head lm is zero-shot prompting) and LoRA on every default target layer at the
rank whose trainable count is closest to the organ's (both counts recorded).

Sources: the paper's abstract and its released checkpoint card (donors of 3 contiguous middle
layers, e.g. GPT-2 layers 4-6; best insertion positions early: 1 for GPT-2). We read "trains them
independently" as training the inserted organ inside the frozen recipient (a block of layers has
no loss of its own), which the card's "transplanted into compatible recipient models" fits; no
official code was in the index we could search. Defaults that are ours: organ = the 3 middle
layers, positions = 1, the middle and the end, AdamW lr 1e-4 for the organ's full weights (LoRA:
5e-4, lorabench's default), 1 epoch. The paper reports perplexity; we report the GLUE dev metric
with SmolLM2 ``--head lm`` (prompt + label words).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .. import inject, models
from ..choices import PRECISIONS
from ..data import build_loaders, get_task, resolve_source
from ..data.prompts import prompt_format_fn
from ..errors import ConfigError
from ..training.placement import device_of, placement, to_device
from . import loop
from . import organ as organs
from .registry import Method, check_arms, check_positive, check_training, opt, register


def parse_range(text: str) -> tuple[int, int]:
    """``"13:16"`` -> (13, 16) (layers 13, 14, 15)."""
    try:
        a, b = (int(x) for x in str(text).split(":"))
    except ValueError:
        raise ConfigError(f"--organ-layers {text!r} is not START:END; e.g. --organ-layers 13:16 for layers 13-15") \
            from None
    return a, b

#: The arms: the organ at each position, LoRA of the organ's size, the recipient alone.
ARMS = ("organ", "lora", "no_adapter")


@register("organ")
class OrganTransplant(Method):
    description = ("train a block of decoder layers inserted at a position, save it as a standalone checkpoint, "
                   "sweep positions; vs LoRA of equal size (Neural Organ Transplantation, arXiv 2601.13580)")

    @dataclass
    class Options:
        task: str = opt("sst2", "GLUE task")
        model: str = opt("smollm2-135m", "donor and recipient (a decoder-only model)")
        layers: int | None = opt(None, "keep only the first N layers of the recipient (unset: all)")
        head: str = opt("lm", "lm: prompt + label words; cls: a fresh score head (trained too)")
        organ_layers: str | None = opt(None, "START:END of the donor block (unset: the 3 middle layers)")
        positions: list[int] = field(default_factory=list, metadata={"help": "insertion positions (unset: 1, middle, end)"})
        lr: float = opt(1e-4, "AdamW learning rate of the organ")
        lora_lr: float = opt(5e-4, "AdamW learning rate of the equal-size LoRA")
        epochs: int = opt(1, "epochs on the real data")
        batch_size: int = opt(16, "examples per batch")
        max_length: int = opt(64, "tokens per example at most")
        train_limit: int | None = opt(500, "real training examples (a seeded random subset)")
        eval_limit: int | None = opt(300, "dev examples per split (a fixed random subset)")
        weight_decay: float = opt(0.0, "AdamW decoupled weight decay of every arm")
        warmup_ratio: float = opt(0.06, "fraction of each arm's steps of linear warmup (then linear decay to 0)")
        max_grad_norm: float = opt(1.0, "clip each arm's gradient norm (0 = off)")
        arms: list[str] = field(default_factory=list, metadata={"help": f"the arms to run, of {', '.join(ARMS)} (unset: all; organ: one per position)"})
        data_dir: str | None = opt(None, "GLUE folder (unset: as lorabench train finds it)")
        seed: int = opt(0, "seeds the data order, the head and adapter inits and the generator")
        precision: str = opt("fp32", "autocast of every training and evaluation forward: fp32, bf16, fp16 "
                                     "(CUDA only) or auto (bf16 on a GPU that has it)")

        def __post_init__(self):
            spec = get_task(self.task)
            loop.check_lr(self.lr, "--lr")  # lr 0 would report untrained organs as trained ones
            loop.check_lr(self.lora_lr, "--lora-lr")
            if self.precision not in PRECISIONS:
                raise ConfigError(f"--precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
            if self.head not in ("lm", "cls"):
                raise ConfigError(f"--head {self.head!r}: use lm (prompt + label words) or cls")
            if self.head == "lm" and spec.is_regression:
                raise ConfigError(f"--head lm scores label words and {spec.name} is a regression task; use --head cls")
            for flag in ("epochs", "batch_size", "max_length"):
                check_positive(getattr(self, flag), f"--{flag.replace('_', '-')}")
            for flag in ("layers", "train_limit", "eval_limit"):
                if getattr(self, flag) is not None:
                    check_positive(getattr(self, flag), f"--{flag.replace('_', '-')}")
            check_arms(self.arms, ARMS)
            check_training(self)
            if self.organ_layers is not None:
                parse_range(self.organ_layers)
            if len(set(self.positions)) != len(self.positions):
                raise ConfigError(f"--positions {self.positions} repeats a position; give each once")

    @classmethod
    def run(cls, opts: OrganTransplant.Options, out: Path, *, progress: bool = True) -> dict:
        spec = get_task(opts.task)
        models.resolve_model(opts.model)
        resolve_source(opts.data_dir, task=spec)

        def fresh():
            loop.set_seed(opts.seed)
            model, tok = models.load_model(opts.model, spec, head=opts.head, layers=opts.layers)
            for p in model.parameters():
                p.requires_grad_(False)
            return model, tok

        model, tok = fresh()
        n = len(organs.decoder_layers(model))
        start, end = parse_range(opts.organ_layers) if opts.organ_layers else (n // 2 - 1, min(n, n // 2 + 2))
        organ_size = organs.extract(model, start, end).numel()  # the range checked before any compute
        positions = opts.positions or sorted({1 if n > 1 else 0, n // 2, n})
        for p in positions:
            organs.check_position(model, p)
        fmt = prompt_format_fn(spec) if opts.head == "lm" else None
        train_loader, dev = build_loaders(spec, tok, data_dir=opts.data_dir, max_length=opts.max_length,
                                          batch_size=opts.batch_size, train_limit=opts.train_limit,
                                          eval_limit=opts.eval_limit, seed=opts.seed, format_fn=fmt, progress=progress)
        probe = next(iter(next(iter(dev.values()))))
        want = set(opts.arms or ARMS)
        arms: dict[str, dict] = {}
        if "no_adapter" in want:
            model.to(placement(opts.precision)[0])  # evaluated where the trained arms are (the GPU when there is one)
            metrics, eval_s = loop.timed_evaluate(model, dev, spec, opts.precision)
            arms["no_adapter"] = {"status": "ok", "error": None, "train": None, "trainable": 0,
                                  "total": inject.count_parameters(model)[1], "dev": metrics, "eval_s": eval_s}

        def train(m, groups, lr, desc):
            return loop.train(m, loop.epochs_of(train_loader), groups, lr=lr, epochs=opts.epochs, seed=opts.seed,
                              progress=progress, desc=desc, precision=opts.precision, weight_decay=opts.weight_decay,
                              warmup_ratio=opts.warmup_ratio, max_grad_norm=opts.max_grad_norm)

        def failed(stats, **more) -> dict | None:  # a diverged arm: its status and error, no dev metric, no file
            if stats["status"] == "ok":
                return None
            return {"status": stats["status"], "error": stats["error"], "dev": None, "train": stats, **more}

        def head_groups(m) -> list[dict]:  # head cls: the fresh score head trains with the organ / LoRA
            if opts.head != "cls":
                return []
            head = loop.head_module(m)
            for p in head.parameters():
                p.requires_grad_(True)
            return [{"params": list(head.parameters())}]

        for p in positions if "organ" in want else []:
            model, _ = fresh()
            donor = organs.extract(model, start, end)
            organs.insert(model, donor, p)
            groups = [{"params": donor.parameters()}] + head_groups(model)
            stats = train(model, groups, opts.lr, f"organ {start}:{end} at {p}")
            total = inject.count_parameters(model)[1]
            if (bad := failed(stats, trainable=organ_size, total=total, position=p)) is not None:
                arms[f"organ@{p}"] = bad
                continue
            folder = organs.save(donor, out / f"organ-at-{p}")
            with torch.no_grad():
                device = device_of(model)  # training put it on the GPU when there is one
                before = model(**loop.inputs(to_device(probe, device))).logits
                again, _ = fresh()
                loaded = organs.load(folder, again)
                organs.insert(again, loaded, loaded.position)
                again.to(device)
                if opts.head == "cls":
                    loop.head_module(again).load_state_dict(loop.head_module(model).state_dict())
                diff = float((again(**loop.inputs(to_device(probe, device))).logits - before).abs().max())
                del again
            metrics, eval_s = loop.timed_evaluate(model, dev, spec, opts.precision)
            arms[f"organ@{p}"] = {"status": "ok", "error": None, "dev": metrics, "eval_s": eval_s, "train": stats, "trainable": organ_size, "total": total, "position": p,
                                  "file": str(folder), "reload_max_abs_diff": diff}

        rank = matched_rank(fresh()[0], organ_size)
        counts = {"organ_parameters": organ_size, "lora_rank": rank}
        if "lora" in want:
            model, _ = fresh()
            inject.apply(model, "lora", "all-linear", r=rank, alpha=2.0 * rank)
            groups = inject.param_groups(model, opts.lora_lr, opts.weight_decay)
            stats = train(model, groups, opts.lora_lr, f"lora r={rank}")
            trainable, total = inject.count_parameters(model)
            arms[f"lora_r{rank}"] = failed(stats, rank=rank, trainable=trainable, total=total)
            if arms[f"lora_r{rank}"] is None:
                metrics, eval_s = loop.timed_evaluate(model, dev, spec, opts.precision)
                arms[f"lora_r{rank}"] = {"status": "ok", "error": None, "dev": metrics, "eval_s": eval_s,
                                         "train": stats, "rank": rank, "trainable": trainable, "total": total}
            counts["lora_parameters"] = trainable
        return {"method": cls.name, "task": spec.name, "primary_metric": spec.primary_metric,
                "source": {"model": opts.model, "layers": opts.layers, "organ_layers": [start, end]},
                "target": {"model": opts.model, "layers": opts.layers, "positions": positions, "recipient_layers": n},
                "options": asdict(opts), "counts": counts,
                "arms": arms, "arm_notes": {"no_adapter": "the recipient alone (head lm: zero-shot prompt)",
                                            "organ@P": "organ inserted before layer P, trained alone",
                                            f"lora_r{rank}": "LoRA at the rank closest to the organ's size"}}


def matched_rank(model, size: int) -> int:
    """The LoRA rank (on every linear layer of the blocks: "all-linear") whose trainable count is closest
    to ``size``: the count is linear in r (sum over the target layers of r (d_in + d_out)), so
    r = round(size / count(r=1)), at most the smallest min(d_in, d_out) of the targets (a larger r
    adds parameters but no rank)."""
    before = inject.count_parameters(model)[0]
    inject.apply(model, "lora", "all-linear", r=1, alpha=2.0)
    per_rank = inject.count_parameters(model)[0] - before
    cap = min(min(m.base_layer.in_features, m.base_layer.out_features) for m in model.modules()
              if hasattr(m, "adapter") and isinstance(getattr(m, "base_layer", None), torch.nn.Linear))
    return min(max(1, round(size / per_rank)), cap)
