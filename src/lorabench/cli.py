"""The ``lorabench`` command: ``train``, ``variants`` (and ``sweep``, ``report``, ``bench``, ``adapter``).

Each subcommand is one row of ``SUBCOMMANDS``: a ``"module:function"`` that adds its
parser to the subparsers and sets ``func`` (args -> exit code) with ``set_defaults``.

Exit codes: 0 ok, 1 a run failed or diverged (its result JSON says why), 2 bad input.
Errors print one line ``error: ...`` on stderr; ``--debug`` (anywhere on the command
line) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import warnings
from typing import Any

#: One row per subcommand, in the order ``lorabench --help`` lists them.
SUBCOMMANDS = [
    "lorabench.cli:add_train_parser",
    "lorabench.cli:add_variants_parser",
    "lorabench.sweep:add_sweep_parser",
    "lorabench.sweep:add_bench_parser",
    "lorabench.report:add_report_parser",
    "lorabench.adapter_cmd:add_adapter_parser",
    "lorabench.cli:add_squeeze_parser",
]


class UsageError(ValueError):
    """A command line argparse could not parse."""


class Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so errors stay one line."""

    def error(self, message: str):
        raise UsageError(f"{message}; see `{self.prog} --help`")


# ---- train -------------------------------------------------------------------------------
def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train", help="fine-tune one model on one GLUE task with one variant",
        description="Fine-tune one model on one GLUE task with one variant and write one result JSON. "
                    "Flags override the --config file; unset flags keep the RunConfig defaults.",
        argument_default=argparse.SUPPRESS,  # only the flags given reach the config
    )
    a = p.add_argument
    a("--config", metavar="FILE.yaml", help="YAML file of RunConfig fields (flags override it)")
    g = p.add_argument_group("what is trained")
    g.add_argument("--model", help="alias (minilm, smollm2-135m), hub id or local folder [minilm]")
    g.add_argument("--layers", type=int, help="keep only the first N transformer layers")
    g.add_argument("--task", help="GLUE task: sst2, cola, mrpc, rte, stsb, qqp, mnli, qnli [sst2]")
    g.add_argument("--variant", help="adapter variant; `lorabench variants` lists them [lora]")
    g.add_argument("--targets", help="layers to adapt: names (query,value), a regex, or all-linear [model default]")
    g.add_argument("--r", type=int, help="rank (the variant's option r)")
    g.add_argument("--alpha", type=float, help="scaling alpha (the variant's option alpha)")
    g.add_argument("--opt", action="append", metavar="KEY=VALUE", dest="opt",
                   help="a variant option, e.g. --opt init=pissa --opt lr_ratio=16 (repeatable)")
    g.add_argument("--head", choices=("cls", "lm"), help="classification head, or prompt + label words [cls]")
    g.add_argument("--pooling", choices=("auto", "cls", "mean"),
                   help="head cls reads [CLS] (cls) or the mean over tokens (mean); auto: as the checkpoint "
                        "declares (mean for sentence-transformers models like minilm) [auto]")
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, help="peak learning rate [5e-4]")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay [0.01]")
    g.add_argument("--epochs", type=float, help="passes over the training set [3]")
    g.add_argument("--batch-size", type=int, help="examples per batch [32]")
    g.add_argument("--eval-batch-size", type=int, help="examples per evaluation batch [64]")
    g.add_argument("--grad-accum", type=int, help="batches per optimizer step [1]")
    g.add_argument("--warmup-ratio", type=float, help="fraction of steps of linear warmup [0.06]")
    g.add_argument("--max-grad-norm", type=float, help="gradient clipping norm, 0 = off [1.0]")
    g.add_argument("--max-length", type=int, help="truncate inputs to N tokens [128]")
    g.add_argument("--train-limit", type=int, help="use a random subset of N training examples")
    g.add_argument("--eval-limit", type=int, help="use a fixed subset of N examples per dev split")
    g.add_argument("--seed", type=int, help="random seed [0]")
    g = p.add_argument_group("evaluation, resources, output")
    g.add_argument("--eval-every", type=int, help="evaluate every N steps, 0 = every epoch [0]")
    g.add_argument("--log-every", type=int, help="record the training loss every N steps [10]")
    g.add_argument("--memory-budget", help="GPU memory cap, e.g. 8GiB or 512MiB")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                   help="autocast: auto = bf16 on CUDA, fp32 on CPU; bf16 also runs on CPU (fp16: CUDA only) [auto]")
    g.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, help="recompute activations")
    g.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, help="batch similar lengths")
    g.add_argument("--quantize", choices=("nf4", "fp4"), help="store the frozen linear layers in 4 bits (QLoRA)")
    g.add_argument("--num-processes", type=int, metavar="N",
                   help="data-parallel processes through accelerate (DDP; gloo on CPU); each takes batch-size/N "
                        "of every batch [1]")
    g.add_argument("--data-dir", help="GLUE folder (one sub-folder per task)")
    g.add_argument("--out", metavar="DIR", help="folder for the result JSON [runs]")
    g.add_argument("--save-adapter", action=argparse.BooleanOptionalAction, help="save the trained adapter")
    g.add_argument("--trust-remote-code", action=argparse.BooleanOptionalAction, help="allow a hub model's code")
    g.add_argument("--quiet", action=argparse.BooleanOptionalAction, help="no progress bars")
    p.set_defaults(func=cmd_train)
    return p


def parse_value(text: str) -> Any:
    """A YAML scalar: 8 -> int, 5e-4 / 0.1 -> float, true -> bool, null -> None, else str."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", value.strip()):
        return float(value)  # YAML 1.1 wants a dot in 5.0e-4; accept 5e-4 too
    if value is not None and not isinstance(value, (int, float, bool, str)):
        return text  # lists and mappings are not options values here
    return value


def parse_opts(items: list[str]) -> dict[str, Any]:
    """["init=pissa", "lr_ratio=16"] -> {"init": "pissa", "lr_ratio": 16}."""
    from .config import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--opt {item!r} is not KEY=VALUE; write e.g. --opt init=pissa")
        out[key.strip().replace("-", "_")] = parse_value(value.strip())
    return out


def config_from_args(args: argparse.Namespace):
    """RunConfig from --config (if any) overridden by the flags given."""
    from .config import RunConfig, load_yaml

    given = {k: v for k, v in vars(args).items() if k not in ("func", "debug", "config", "opt", "command")}
    data = load_yaml(args.config) if getattr(args, "config", None) else {}
    flag_opts = parse_opts(getattr(args, "opt", None) or [])
    options = data.get("options")
    if isinstance(options, dict):
        options = dict(options)
        for key in ("r", "alpha"):  # --r / --alpha beat the file's options.r / options.alpha
            if key in given:
                options.pop(key, None)
        data["options"] = options
    for key in ("r", "alpha"):  # --opt r=... beats the file's r
        if key in flag_opts:
            data.pop(key, None)
    if flag_opts:
        data["options"] = {**(options if isinstance(options, dict) else {}), **flag_opts}
    data.update(given)
    return RunConfig.from_dict(data)


def cmd_train(args: argparse.Namespace) -> int:
    from .distributed import is_main
    from .results import result_path
    from .run import execute

    cfg = config_from_args(args)
    if not args.debug:
        _quiet_transformers()
    result = execute(cfg, progress=not cfg.quiet)
    if not is_main():  # under accelerate launch: rank 0 speaks for the run
        return 0 if result["status"] == "ok" else 1
    print(summary(result, result_path(cfg.out, result["run_id"])))
    if result["status"] != "ok":
        print(f"error: run {result['status']}: {result['error']}", file=sys.stderr)
        return 1
    return 0


def _quiet_transformers() -> None:
    """No loading reports or weight-loading bars from transformers: the summary says what matters.
    (Its errors still show; ``--debug`` keeps everything.)"""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def summary(result: dict, path) -> str:
    """A few lines: run id and status, best dev metrics, time, memory, where the JSON is."""
    from .measure import format_bytes

    lines = [f"run {result['run_id']}: {result['status']}  {result['model']} / {result['task']} / {result['variant']}"
             f"  (trainable {result['params']['trainable']:,} of {result['params']['total']:,} parameters)"]
    best = result.get("best")
    if best:
        for split, metrics in best["metrics"].items():
            shown = "  ".join(f"{k}={v:.4f}" for k, v in metrics.items() if v is not None)
            lines.append(f"best dev (step {best['step']}, epoch {best['epoch']:g}): {split}  {shown}")
    t, m = result["time"], result["memory"]
    peak = m.get("peak_allocated_bytes") if m.get("device") == "cuda" else m.get("peak_rss_bytes")
    what = "peak CUDA allocated" if m.get("device") == "cuda" else "peak RSS"
    lines.append(f"train {t['train_s']:.1f} s ({t['examples_per_s']:.0f} examples/s, {t['tokens_per_s']:.0f} tokens/s), "
                 f"eval {t['eval_s']:.1f} s, {what} {format_bytes(peak)}")
    lines.append(f"result: {path}")
    return "\n".join(lines)


# ---- variants ----------------------------------------------------------------------------
def add_variants_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("variants", help="list the variants and their options",
                              description="List every registered variant, its paper and its options with defaults.")
    p.set_defaults(func=cmd_variants)
    return p


def describe_variants() -> str:
    """The three axes: structures (variants), initialisations (``init=``), optimisation rules
    (``optimizer=``); the last two combine with any LoRA-family structure."""
    import dataclasses

    from . import adapters
    from .adapters.lora import INITS, describe_init
    from .adapters.rules import RULES, RuleOptions

    rule_fields = {f.name for f in dataclasses.fields(RuleOptions)}
    blocks = ["structures (--variant NAME; options: --opt KEY=VALUE)"]
    for name in adapters.names():
        cls = adapters.get(name)
        fields = sorted(dataclasses.fields(cls.Options), key=lambda f: f.name in rule_fields)  # rule options last
        opts = ", ".join(f"{f.name}={_default(f)!r}" for f in fields)
        blocks.append(f"{name}\n    {cls.description or (cls.__doc__ or '').strip().splitlines()[0]}\n"
                      f"    options: {opts or '(none)'}")
    width = max(map(len, [*INITS, *RULES]))
    blocks.append("\ninitialisations (--opt init=NAME, with any variant that has an init option)")
    blocks += [f"    {name:<{width}}  {describe_init(name)}" for name in sorted(INITS)]
    blocks.append("\noptimisation rules (--opt optimizer=NAME, with any variant that has an optimizer option)")
    for name, rule in RULES.items():
        defaults = {f.name: f.default for f in dataclasses.fields(RuleOptions)}
        opts = ", ".join(f"{o}={defaults[o]!r}" for o in rule.options)
        blocks.append(f"    {name:<{width}}  {rule.description}" + (f"; options: {opts}" if opts else ""))
    return "\n".join(blocks)


def _default(f) -> Any:
    import dataclasses

    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def cmd_variants(args: argparse.Namespace) -> int:
    print(describe_variants())
    return 0


# ---- squeeze ----------------------------------------------------------------------------
def add_squeeze_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "squeeze", help="compress a saved LoRA-family adapter to a lower rank (LoRA-Squeeze, RSVD)",
        description="Write the best rank-r approximation of a saved LoRA-family adapter as a plain LoRA "
                    "(LoRA-Squeeze, arXiv 2602.10993). Needs only the adapter folder, not the base model.",
    )
    p.add_argument("directory", help="adapter folder (lorabench_adapter.json + .safetensors)")
    p.add_argument("--rank", type=int, required=True, help="target rank r (at most the adapter's rank)")
    p.add_argument("--out", metavar="DIR", default=None, help="output folder [DIRECTORY-r{rank}]")
    p.add_argument("--niter", type=int, default=2, help="RSVD power iterations, 0 = exact SVD [2]")
    p.add_argument("--oversample", type=int, default=10, help="RSVD extra probes [10]")
    p.set_defaults(func=cmd_squeeze)
    return p


def cmd_squeeze(args: argparse.Namespace) -> int:
    from .adapters.lora_squeeze import squeeze_adapter_dir

    out = squeeze_adapter_dir(args.directory, args.rank, args.out, niter=args.niter, oversample=args.oversample)
    print(f"squeezed {args.directory} to a rank-{args.rank} LoRA: {out}")
    return 0


# ---- main --------------------------------------------------------------------------------
def build_parser() -> Parser:
    parser = Parser(prog="lorabench", description="Fine-tune transformers with LoRA and its variants; benchmark them on GLUE.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"lorabench {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors (any position)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for row in SUBCOMMANDS:
        module, _, function = row.partition(":")
        try:
            builder = getattr(importlib.import_module(module), function)
        except (ImportError, AttributeError) as e:  # a subcommand still being written must not break the others
            if module == __name__:
                raise
            print(f"warning: subcommand {row} unavailable ({e})", file=sys.stderr)
            continue
        builder(subparsers)
    return parser


def _input_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "bad input" (exit 2), from whichever modules are importable."""
    from .adapters.base import VariantError
    from .config import ConfigError

    errors: list[type[BaseException]] = [UsageError, ConfigError, VariantError]
    for module, name in (("lorabench.data", "DataError"), ("lorabench.models", "ModelError")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    if debug:  # accepted anywhere: move it before the subcommand, where the parser knows it
        argv = ["--debug"] + [a for a in argv if a != "--debug"]
    format_warning = warnings.formatwarning
    if not debug:  # "warning: message" on one line, not the file, line and source of the call
        warnings.formatwarning = lambda message, category, *rest: f"warning: {message}\n"
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `lorabench variants | head`
        sys.stdout = None
        return 0
    except Exception as e:
        if debug:
            raise
        code = 2 if isinstance(e, _input_errors()) else 1
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if code == 1 and type(e).__name__ != "RunFailed":
            message = f"{type(e).__name__}: {message}"
        print(f"error: {message}", file=sys.stderr)
        return code
    finally:
        warnings.formatwarning = format_warning


if __name__ == "__main__":
    raise SystemExit(main())
