"""Federated LoRA, simulated in one process: one GLUE task split over N clients, R rounds.

    from lorabench.federated import FedSettings, simulate
    record = simulate(cfg, FedSettings("lora_fair", clients=10, beta=0.5, rounds=5, fraction=0.5))

One server aggregation per file, registered where it is defined (``registry.register``), as
variants are: ``fedavg``, ``ffa_lora``, ``lora_fair``, ``fedsmooth``. ``split`` cuts the training
set (Dirichlet label skew or IID), ``simulate`` runs the rounds on one model loaded once, and
``table`` builds the round x method table from result JSONs. ``lorabench federate``
(``commands/federate.py``) is the command line.

Clients run one after another in one process (one model, tensors copied in and out), which
suits one machine. Across machines, a federated framework such as Flower (its simulation
engine or a deployment) would host the clients; an aggregation here is a pure function of the
uploaded factors and weights (``Aggregation.aggregate``) that a Flower strategy could call.
lorabench does not depend on it.
"""

from __future__ import annotations

from . import fedavg, fedsmooth, ffa_lora, lora_fair  # noqa: F401  (register the methods)
from .registry import Aggregation, get, names, register
from .settings import FedSettings
from .simulate import simulate
from .split import dirichlet_split, label_histograms, sample_clients

__all__ = ["Aggregation", "FedSettings", "dirichlet_split", "get", "label_histograms", "names", "register",
           "sample_clients", "simulate"]
