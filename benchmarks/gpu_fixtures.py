"""Fixtures of benchmarks/gpu_check.py: the model shapes and run sizes per mode, random-weight models
built from configs with a small word-level tokenizer, synthetic SST-2 folders, and small helpers."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import random
import shutil
import subprocess
import sys
import traceback
import warnings
from pathlib import Path


HERE = Path(__file__).resolve().parent
PEFT_VARIANTS = ("lora", "dora", "vera", "pissa")
SECTIONS = ("variants", "seed000", "seed000_nf4", "peft_step_time", "oom_retry", "packing")

#: Token lengths of SST-2 training prompts ("Review: ...\nSentiment (positive or negative):"),
#: the 0th, 5th, ..., 100th percentiles over its 67,349 examples (SmolLM2 tokenizer; mean 21.3).
SST2_PROMPT_TOKENS = (11, 12, 12, 13, 13, 14, 15, 15, 16, 17, 18, 19, 21, 22, 24, 26, 28, 31, 35, 41, 78)
REFERENCE_S = 4959.0  #: 20,000 examples of the seed setting on an RTX 2070
TARGET_S = 120.0  #: ... and the target on one H200
PROJECT_EXAMPLES = 20_000
PEFT_VARIANTS = ("lora", "dora", "vera", "pissa")
SECTIONS = ("variants", "seed000", "seed000_nf4", "peft_step_time", "oom_retry", "packing")
GiB = 2**30

LLAMA_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=1024, max_position_embeddings=256)
#: Model shapes per mode. "tinyllama" is TinyLlama-1.1B's; "oom" is sized so that a 1024-example
#: micro-batch of 128 tokens needs ~20 GB of activations against a 4 GiB cap (fits at ~128).
SHAPES = {
    "full": {
        "variants": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=32000, max_position_embeddings=2048),
        "tinyllama": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                          num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5),
        "oom": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=2, num_attention_heads=8,
                    num_key_value_heads=8, vocab_size=32000, max_position_embeddings=2048),
        # all-MiniLM-L6-v2's shape, as benchmarks/step_time.py measures on CPU
        "peft": dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=12,
                     vocab_size=30522, max_position_embeddings=512),
    },
    "tiny": {
        "variants": LLAMA_TINY,
        "tinyllama": LLAMA_TINY,
        "oom": LLAMA_TINY,
        "peft": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     vocab_size=1024, max_position_embeddings=256),
    },
}
#: Run sizes per mode: examples in the synthetic files, seed-setting steps, OOM-check batch, ...
SIZES = {
    "full": dict(train=2048, dev=64, seed_steps=10, eval_every=2, variant_batch=8, oom_batch=1024,
                 oom_cap=4 * GiB, oom_cap_examples=200, peft_steps=20, peft_warmup=3, peft_batch=32, peft_seq=128),
    "tiny": dict(train=256, dev=32, seed_steps=4, eval_every=2, variant_batch=4, oom_batch=16,
                 oom_cap_examples=5, peft_steps=2, peft_warmup=1, peft_batch=4, peft_seq=16),
}
WORDS = 500  #: synthetic vocabulary: w0 .. w499


# ---- small helpers ------------------------------------------------------------------------------
def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def gib(n: int | float | None) -> str:
    return "n/a" if n is None else f"{n / GiB:.2f} GiB"


def error_info(e: BaseException) -> dict[str, str]:
    """The error as one line plus the tail of its traceback (what a remote run needs to debug)."""
    text = f"{type(e).__name__}: {e}".strip()
    return {"error": text.splitlines()[0][:500] if text else type(e).__name__,
            "traceback": "".join(traceback.format_exception(e))[-3000:]}


@contextlib.contextmanager
def captured_warnings(into: list[str]):
    """Record the distinct warning messages raised inside (they go into the JSON, not stderr)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                msg = f"{w.category.__name__}: {w.message}"[:300]
                if msg not in into:
                    into.append(msg)


def free_cuda() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def install_bitsandbytes(path: str | None, work: Path) -> str:
    """Put bitsandbytes on sys.path from ``path``: a wheel (pip-installed into a temporary target)
    or a folder that holds the ``bitsandbytes`` package (or is it). Returns what was done."""
    if path is None:
        return "not given"
    src = Path(path).expanduser().resolve()
    if src.is_dir():
        site = src.parent if (src / "__init__.py").is_file() and src.name == "bitsandbytes" else src
        if not (site / "bitsandbytes" / "__init__.py").is_file():
            raise FileNotFoundError(f"{src} holds no bitsandbytes package")
        sys.path.insert(0, str(site))
        return f"folder {site}"
    if not src.is_file():
        raise FileNotFoundError(f"--bnb-wheel {path}: no such file or folder")
    target = work / "bnb-site"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(target),
           str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"pip install {src.name} failed: {(done.stderr or done.stdout).strip()[-500:]}")
    sys.path.insert(0, str(target))
    return f"wheel {src.name} -> {target}"


def bitsandbytes_status() -> tuple[bool, str]:
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # ImportError, or a broken native library
        return False, f"no bitsandbytes ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
    where = Path(bitsandbytes.__file__).resolve().parent.parent
    return True, f"bitsandbytes {getattr(bitsandbytes, '__version__', '?')} ({where})"


# ---- fixtures: tokenizer, synthetic SST-2, model folders --------------------------------------
class Fixtures:
    """Everything the checks load from disk, built in ``work`` (a temporary folder)."""

    def __init__(self, work: Path, mode: str, device: str):
        self.work, self.mode, self.device = work, mode, device
        self.shapes, self.sizes = SHAPES[mode], SIZES[mode]
        self.tokenizer = self._tokenizer()
        self.template_tokens = self._template_tokens()
        self.glue = self._glue(work / "glue", long=False)
        self.glue_long = None  # for the OOM check, built on demand
        self._dirs: dict[str, Path] = {}

    def _tokenizer(self):
        """A word-level tokenizer over w0..w499, the prompt's words and Llama's special tokens."""
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        from lorabench.data.prompts import PROMPTS

        pre = pre_tokenizers.Whitespace()
        words = ["<unk>", "<s>", "</s>", "Answer"]
        for prompt in PROMPTS.values():
            for text in (prompt.template.replace("{a}", " ").replace("{b}", " "), *prompt.words):
                words += [w for w, _ in pre.pre_tokenize_str(text)]
        words += [f"w{i}" for i in range(WORDS)]
        vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
        core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        core.pre_tokenizer = pre
        tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                      model_input_names=["input_ids", "attention_mask"])
        assert len(tok) <= min(s["vocab_size"] for s in self.shapes.values()), "tokenizer larger than a model vocab"
        return tok

    def _template_tokens(self) -> int:
        from lorabench.data import Example, get_task
        from lorabench.data.prompts import prompt_format_fn

        text, _ = prompt_format_fn(get_task("sst2"))(Example("", None, 0))
        return len(self.tokenizer(text)["input_ids"])

    def _sentence(self, rng: random.Random, long: bool) -> str:
        if long:  # longer than any max length: every example is truncated to max_length tokens
            n = 300
        else:  # inverse CDF of the SST-2 prompt lengths, minus the template's own tokens
            q = SST2_PROMPT_TOKENS
            u = rng.random() * (len(q) - 1)
            i = min(int(u), len(q) - 2)
            n = max(1, round(q[i] + (u - i) * (q[i + 1] - q[i])) - self.template_tokens)
        return " ".join(f"w{rng.randrange(WORDS)}" for _ in range(n))

    def _glue(self, root: Path, long: bool) -> Path:
        rng = random.Random(0)
        folder = root / "SST-2"
        folder.mkdir(parents=True, exist_ok=True)
        for name, n in (("train.tsv", self.sizes["train"]), ("dev.tsv", self.sizes["dev"])):
            rows = [f"{self._sentence(rng, long)}\t{rng.randrange(2)}" for _ in range(n)]
            (folder / name).write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
        return root

    def long_glue(self) -> Path:
        if self.glue_long is None:
            self.glue_long = self._glue(self.work / "glue-long", long=True)
        return self.glue_long

    def model_dir(self, kind: str) -> Path:
        """A folder with a random-init model of shape ``kind`` and the tokenizer (built once)."""
        if kind in self._dirs:
            return self._dirs[kind]
        import torch

        path = self.work / f"model-{kind}"
        shape = self.shapes[kind]
        torch.manual_seed(0)
        # initialised on the GPU when there is one (TinyLlama's 1.1B weights in seconds), saved in bf16
        where = "cuda" if self.device == "cuda" else "cpu"
        if kind == "peft":
            from transformers import BertConfig, BertForSequenceClassification

            config = BertConfig(**shape, num_labels=2)
            with torch.device(where):
                model = BertForSequenceClassification(config)
        else:
            from transformers import AutoModelForCausalLM, LlamaConfig

            tok = self.tokenizer
            config = LlamaConfig(**shape, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                 tie_word_embeddings=False)
            with torch.device(where):
                model = AutoModelForCausalLM.from_config(config)
            model.to(torch.bfloat16)
        model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        del model
        free_cuda()
        self._dirs[kind] = path
        return path

    def cleanup_model(self, kind: str) -> None:
        path = self._dirs.pop(kind, None)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)


# ---- the checks ----------------------------------------------------------------------------------


@contextlib.contextmanager
def simulated_oom(cap: int):
    """Every ``nn.Embedding`` forward on more than ``cap`` rows raises CUDA out of memory (CPU check)."""
    import torch

    def hook(module, inputs):
        if isinstance(module, torch.nn.Embedding) and inputs and torch.is_tensor(inputs[0]) \
                and inputs[0].ndim == 2 and inputs[0].shape[0] > cap:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory (simulated: {inputs[0].shape[0]} examples > cap of {cap})")

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="One short run that settles lorabench's CUDA paths: a table and gpu_check.json.")
    p.add_argument("--out", required=True, help="folder for gpu_check.json, gpu_check.txt and runs/")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cuda (default) or cpu (hides any GPU from this process)")
    p.add_argument("--tiny", "--dry-run", dest="tiny", action="store_true",
                   help="tiny configs (2 layers, hidden 64): the same code paths in seconds")
    p.add_argument("--bnb-wheel", default=None,
                   help="a bitsandbytes wheel (pip-installed into a temporary folder) or a folder holding the "
                        "bitsandbytes package; without it, bitsandbytes is used only if importable")
    p.add_argument("--no-bnb", action="store_true", help="act as if bitsandbytes were missing (NF4 and qlora skipped)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--variants", default=None, help="comma-separated subset of variants for the variants check")
    p.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--time-limit", type=float, default=450.0,
                   help="seconds after which the remaining checks are skipped (default 450; 0: none)")
    p.add_argument("--work", default=None, help="folder for the temporary models and data (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = p.parse_args(argv)
    args.time_limit = args.time_limit or None
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    return args
