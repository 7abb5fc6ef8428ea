"""One federated simulation in one process: clients train one after another on one model.

    record = simulate(cfg, FedSettings("fedavg", clients=10, beta=0.5, rounds=5, fraction=0.5))

The base model is loaded and adapted once (with the method's client variant); a client's round
copies the starting adapter and head into it (``Aggregation.begin_client``), trains with
``train.fit`` (a RunConfig with epochs = E, seeded per client and round), and copies its
factors and head out. The server aggregates the factors with the method and the head with
FedAvg (every method: the classification head is trained by the clients and averaged with
the example-count weights), then the global model is evaluated on the dev set.

Per round: the sampled clients and their weights, the global dev metrics, bytes sent up and
down (numel x element size of the tensors exchanged; the head included), the aggregation error
sum_layers ||sum_i p_i B_i A_i - B_glob A_glob||_F (before the LoRA scale), the clients' mean
training loss and the wall time.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from .. import inject, models
from ..adapters.base import adapted_layers
from ..config import RunConfig
from ..data import build_loaders, get_task
from ..data.batching import ShuffledBatches
from ..training.evaluate import evaluate
from ..training.placement import autocast_dtype, device_of
from ..train import fit, set_seed
from .registry import Aggregation, Factors, weighted_mean, weighted_product
from .settings import FedSettings
from .split import dirichlet_split, label_histograms, sample_clients


def nbytes(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes of a message: sum of numel x element size."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def aggregation_error(uploads: list[Factors], p: list[float], new: Factors) -> float:
    """sum over layers of ||sum_i p_i B_i A_i - B_glob A_glob||_F."""
    total = 0.0
    for layer, (B, A) in new.items():
        ideal = weighted_product([u[layer][0] for u in uploads], [u[layer][1] for u in uploads], p)
        total += float((ideal - B.float() @ A.float()).norm())
    return total


def client_seed(seed: int, round_index: int, client: int) -> int:
    return int(np.random.SeedSequence([seed, round_index, client]).generate_state(1)[0])


class Federation:
    """The shared model and what the server holds: global factors, global head, the split."""

    def __init__(self, model, cfg: RunConfig, settings: FedSettings, parts: list[list[int]], train_ds, collate):
        self.model, self.cfg, self.settings, self.parts = model, cfg, settings, parts
        self.train_ds, self.collate = train_ds, collate
        self.layers = dict(adapted_layers(model))
        self.scale = next(iter(self.layers.values())).adapter.scale
        self.rank = next(iter(self.layers.values())).adapter.lora_A.shape[0]
        owned = {id(p) for layer in self.layers.values() for p in layer.adapter.parameters()}
        self.head_params = {n: p for n, p in model.named_parameters() if p.requires_grad and id(p) not in owned}
        self.global_factors: Factors = self.get_factors()  # the shared init: B = 0, A random
        self.global_head = self.get_head()
        self.round_index = 0

    # ---- copy tensors in and out of the one model ------------------------------------------
    def get_factors(self) -> Factors:
        return {n: (l.adapter.lora_B.detach().float().cpu().clone(), l.adapter.lora_A.detach().float().cpu().clone())
                for n, l in self.layers.items()}

    @torch.no_grad()
    def set_factors(self, factors: Factors) -> None:
        for n, (B, A) in factors.items():
            self.layers[n].adapter.lora_B.copy_(B)
            self.layers[n].adapter.lora_A.copy_(A)

    def get_head(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.head_params.items()}

    @torch.no_grad()
    def set_head(self, head: dict[str, torch.Tensor]) -> None:
        for n, t in head.items():
            self.head_params[n].copy_(t)

    # ---- one client's data and settings --------------------------------------------------------
    def client_loader(self, client: int, seed: int) -> DataLoader:
        idx = self.parts[client]
        lengths = [self.train_ds.lengths[i] for i in idx]
        sampler = ShuffledBatches(lengths, self.cfg.batch_size, seed=seed, group_by_length=self.cfg.group_by_length)
        return DataLoader(Subset(self.train_ds, idx), batch_sampler=sampler, collate_fn=self.collate)

    def client_config(self, seed: int) -> RunConfig:
        return dataclasses.replace(self.cfg, epochs=float(self.settings.local_epochs), seed=seed, quiet=True)


def evaluate_global(model, loaders: dict, task, precision: str = "fp32") -> dict[str, dict[str, float]]:
    """{split: {metric: value}} of the model as it stands (the global model), on its device, in the
    run's autocast (``training.evaluate``: the one evaluation every loop shares)."""
    device = device_of(model)
    return evaluate(model, loaders, task, device, autocast_dtype(precision, device))


def load(cfg: RunConfig, settings: FedSettings):
    """(task, model, train dataset, collate, dev loaders): the model adapted once for every client."""
    task = get_task(cfg.task)
    set_seed(cfg.seed)  # the head and the shared adapter init
    model, tokenizer = models.load_model(cfg.model, task, head=cfg.head, layers=cfg.layers, pooling=cfg.pooling,
                                         trust_remote_code=cfg.trust_remote_code, dropout=cfg.model_dropout)
    inject.apply(model, cfg.variant, cfg.targets, **cfg.variant_options())
    train_loader, dev = build_loaders(task, tokenizer, data_dir=cfg.data_dir, max_length=cfg.max_length,
                                      batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
                                      train_limit=cfg.train_limit, eval_limit=cfg.eval_limit, seed=cfg.seed,
                                      data_revision=cfg.data_revision, progress=not cfg.quiet)
    return task, model, train_loader.dataset, train_loader.collate_fn, dev


class Diverged(Exception):
    """A client's update or the aggregated global model diverged in a round (``simulate`` records it)."""


def global_divergence(fed: Federation, metrics: dict, task) -> str | None:
    """Why the global model after a round is diverged: non-finite factors or head, or a non-finite dev metric."""
    bad = [n for n, (B, A) in fed.global_factors.items() if not (torch.isfinite(B).all() and torch.isfinite(A).all())]
    bad += [n for n, t in fed.global_head.items() if not torch.isfinite(t).all()]
    if bad:
        return f"the global model's tensors became non-finite ({', '.join(bad[:3])})"
    value = next(iter(metrics.values()), {}).get(task.primary_metric)
    if value is None or not np.isfinite(value):
        return f"the global model's dev {task.primary_metric} is {value}"
    return None


def run_round(fed: Federation, method: Aggregation, task, dev: dict) -> dict[str, Any]:
    """One round: sampled clients train in turn, the server aggregates, the global model is evaluated.
    Raises ``Diverged`` (naming the round and the client) when a client's training or the global
    model diverges: the round's partial record is its ``record`` attribute."""
    s, t = fed.settings, fed.round_index
    started = time.perf_counter()
    picked = sample_clients(s.clients, s.fraction, t, fed.cfg.seed)
    sizes = [len(fed.parts[k]) for k in picked]
    p = [n / sum(sizes) for n in sizes]
    down = nbytes(method.download(fed)) + nbytes(fed.global_head)  # what each sampled client receives
    uploads, heads, losses, up = [], [], [], 0
    for k in picked:
        seed = client_seed(fed.cfg.seed, t, k)
        set_seed(seed)
        loader = fed.client_loader(k, seed)
        fed.set_head(fed.global_head)
        method.begin_client(fed, k, loader)
        # no dev set on a client: the server evaluates the global model; fit's checks (loss, tensors) still run
        summary = fit(fed.model, loader, {}, task, fed.client_config(seed), progress=False)
        if summary["status"] != "ok":
            error = Diverged(f"client {k} in round {t + 1}: {summary['error']}")
            error.record = {"round": t + 1, "client": k, "clients": picked}
            raise error
        factors = method.end_client(fed, k)
        uploads.append(factors)
        heads.append(fed.get_head())
        roles = {"B": 0, "A": 1}
        up += nbytes({f"{n}.{r}": f[roles[r]] for n, f in factors.items() for r in method.sends_up}) + nbytes(heads[-1])
        losses.extend(loss for _, loss in summary["train_loss"])
    new = method.aggregate(uploads, p, fed)
    error = aggregation_error(uploads, p, new)
    method.end_round(fed, new)
    fed.global_head = {n: weighted_mean([h[n] for h in heads], p).to(fed.global_head[n].dtype) for n in heads[0]}
    method.load_global(fed)
    fed.set_head(fed.global_head)
    evaluated = time.perf_counter()
    metrics = evaluate_global(fed.model, dev, task, fed.cfg.precision)
    done = time.perf_counter()
    record = {"round": t + 1, "clients": picked, "sizes": sizes, "weights": p, "metrics": metrics, "bytes_up": up,
              "bytes_down": down * len(picked), "aggregation_error": error,
              "train_loss": float(np.mean(losses)) if losses else None, "time_s": done - started,
              "eval_s": done - evaluated}
    why = global_divergence(fed, metrics, task)
    if why is not None:
        failed = Diverged(f"{why} after round {t + 1}")
        failed.record = record
        raise failed
    return record


HEADS = "the classification head is trained by every client and averaged with FedAvg (example-count weights) in every method"


def simulate(cfg: RunConfig, settings: FedSettings, *, progress: bool = True, keep_model: bool = False) -> dict[str, Any]:
    """The federated run's record (``details`` of its result envelope; ``federated.recipe``): with
    "status" ("ok" or "diverged"), "error" and "diverged_at" ({round, client} or the round's record
    when the global model diverged), the rounds before a divergence kept."""
    method = settings.aggregation()
    task, model, train_ds, collate, dev = load(cfg, settings)
    labels = train_ds.labels.tolist()
    parts = dirichlet_split(labels, settings.clients, settings.beta, cfg.seed)
    fed = Federation(model, cfg, settings, parts, train_ds, collate)
    record = {"split": {"sizes": [len(q) for q in parts], "label_histograms": label_histograms(labels, parts)},
              "rank": fed.rank, "scale": fed.scale, "head_tensors": sorted(fed.head_params),
              "initial": {"metrics": evaluate_global(model, dev, task, cfg.precision)}, "rounds": []}
    record["status"], record["error"], record["diverged_at"] = "ok", None, None
    for t in tqdm(range(settings.rounds), disable=not progress, desc=f"federate {settings.method}", unit="round"):
        fed.round_index = t
        try:
            record["rounds"].append(run_round(fed, method, task, dev))
        except Diverged as e:  # stop: the rounds before it are kept, the result says where it went wrong
            why = str(e)
            record["status"], record["error"] = "diverged", why if "learning rate" in why else f"{why}; lower the learning rate"
            record["diverged_at"] = e.record
            break
    last = record["rounds"][-1] if record["rounds"] else None
    record["final"] = {"metrics": last["metrics"] if last else {}}
    record["bytes"] = {"up": sum(r["bytes_up"] for r in record["rounds"]),
                       "down": sum(r["bytes_down"] for r in record["rounds"])}
    if keep_model:  # the trained global model (for its parameter counts), not JSON
        record["model"] = model
    return record
