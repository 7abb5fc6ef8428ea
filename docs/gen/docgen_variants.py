"""The variants page, generated from the adapter registry when the site is built.

Every fact comes from the code: ``commands.variants.variant_facts`` (what ``lorabench variants``
prints: description, options and defaults, packing, ``nn.Conv2d``), the class docstring (paper and
update rule), the init and rule registries (the two axes that combine with a LoRA-family
structure), and a probe of the PEFT hooks on a tiny model (``peft_export``).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import tempfile
import warnings

ARXIV = re.compile(r"arXiv[: ]*(\d{4}\.\d{4,5})")


def arxiv_ids(cls: type) -> list[str]:
    """The arXiv ids a variant cites, its own paper first (from ``description``, then the docstring)."""
    ids = ARXIV.findall(cls.description or "") + ARXIV.findall(cls.__doc__ or "")
    return list(dict.fromkeys(ids))


def paper(cls: type) -> str:
    """The citation of a variant's paper: its docstring up to its first arXiv id (title, authors, year)."""
    ids = arxiv_ids(cls)
    if not ids:
        return "none cited"
    doc = " ".join((cls.__doc__ or "").split())
    at = doc.find(ids[0])
    cite = doc[:at].removesuffix("arXiv ").removesuffix("arXiv:").rstrip(" ,(") if at > 0 else ""
    return f"{_md(cite)}, [arXiv {ids[0]}](https://arxiv.org/abs/{ids[0]})" if cite else \
        f"[arXiv {ids[0]}](https://arxiv.org/abs/{ids[0]})"


def peft_export(cls: type) -> str | None:
    """None when ``lorabench.export_peft`` writes this variant in PEFT's format, else why not: its
    hooks are asked on a tiny model (two 64 x 64 linear layers, or two convolutions for a variant
    that adapts only ``nn.Conv2d``), as ``export_peft`` asks them."""
    import torch
    from torch import nn

    import lorabench
    from lorabench.errors import INPUT_ERRORS

    conv_only = cls.__module__.endswith("cp_lora")

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            make = (lambda: nn.Conv2d(64, 64, 3, padding=1)) if conv_only else (lambda: nn.Linear(64, 64))
            self.query, self.value, self.classifier = make(), make(), nn.Linear(64, 2)

    torch.manual_seed(0)
    model = Tiny()
    try:
        with warnings.catch_warnings():  # torch's own deprecations, raised when QLoRA imports bitsandbytes
            warnings.simplefilter("ignore", DeprecationWarning)
            lorabench.apply(model, cls.name, targets=["query", "value"], **_small(cls))
        with tempfile.TemporaryDirectory() as folder:
            lorabench.export_peft(model, folder)
    except INPUT_ERRORS as e:
        return str(e).split(";")[0].strip()
    return None


def _small(cls: type) -> dict:
    """Options that fit 64-wide layers (some defaults ask for a rank above 64)."""
    fields = {f.name: f.default for f in dataclasses.fields(cls.Options)}
    return {"r": 8} if isinstance(fields.get("r"), int) and fields["r"] > 8 else {}


def peft_import(cls: type) -> str | None:
    """The PEFT method ``lorabench.load_peft`` reads back as this variant, if any."""
    return vars(cls).get("peft_method")


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def _yes(why: str | None) -> str:
    return "yes" if why is None else f"no: {_md(why)}"


def _combines(options: dict) -> str:
    axes = []
    if "init" in options:
        axes.append("any initialisation (`--opt init=NAME`)")
    if "optimizer" in options:
        axes.append("any optimisation rule (`--opt optimizer=NAME`)")
    if "rslora" in options:
        axes.append("rsLoRA scaling (`--opt rslora=true`)")
    return ", ".join(axes) or "its own options only"


def summary_table(facts: list[dict], exports: dict[str, str | None]) -> str:
    rows = ["| variant | paper | packs | `nn.Conv2d` | PEFT export | combines with |", "|---|---|---|---|---|---|"]
    for f in facts:
        ids = arxiv_ids(f["cls"])
        link = f"[{ids[0]}](https://arxiv.org/abs/{ids[0]})" if ids else "—"
        yes = {None: "yes"}
        rows.append(f"| [`{f['name']}`](#{f['name']}) | {link} | {yes.get(f['packs'], 'no')} | "
                    f"{yes.get(f['conv'], 'no')} | {yes.get(exports[f['name']], 'no')} | "
                    f"{'init, rule' if {'init', 'optimizer'} <= set(f['options']) else '—'} |")
    return "\n".join(rows)


def variant_section(fact: dict, export: str | None) -> str:
    cls, options = fact["cls"], fact["options"]
    opts = ", ".join(f"`{k}={v!r}`" for k, v in options.items()) or "(none)"
    reads = peft_import(cls)
    lines = [
        f"### {fact['name']}", "", _md(fact["description"]), "",
        "| | |", "|---|---|",
        f"| paper | {paper(cls)} |",
        f"| options (defaults) | {opts} |",
        f"| combines with | {_combines(options)} |",
        f"| packs (`--pack K`) | {_yes(fact['packs'])} |",
        f"| adapts `nn.Conv2d` | {_yes(fact['conv'])} |",
        f"| `lorabench.export_peft` | {_yes(export)} |",
        f"| `lorabench.load_peft` reads | {f'PEFT `{reads}` folders' if reads else '—'} |",
        "", "```text", inspect.cleandoc(cls.__doc__ or ""), "```", "",
    ]
    return "\n".join(lines)


def inits_table() -> str:
    from lorabench.adapters.lora import INITS, describe_init

    rows = ["| `init=` | what it does |", "|---|---|"]
    rows += [f"| `{name}` | {_md(describe_init(name))} |" for name in sorted(INITS)]
    return "\n".join(rows)


def rules_table() -> str:
    from lorabench.adapters.rules import RULES, RuleOptions

    defaults = {f.name: f.default for f in dataclasses.fields(RuleOptions)}
    rows = ["| `optimizer=` | what it does | its options (defaults) |", "|---|---|---|"]
    for name, rule in RULES.items():
        opts = ", ".join(f"`{o}={defaults[o]!r}`" for o in rule.options) or "—"
        rows.append(f"| `{name}` | {_md(rule.description)} | {opts} |")
    return "\n".join(rows)


def variants_page() -> str:
    """The body of the variants page: the summary table, then one section per registered variant."""
    from lorabench.commands.variants import variant_facts

    facts = variant_facts()
    exports = {f["name"]: peft_export(f["cls"]) for f in facts}
    parts = [f"{len(facts)} registered variants (`lorabench.variants()`).", "", summary_table(facts, exports), "",
             "## Initialisations", "", inits_table(), "", "## Optimisation rules", "", rules_table(), "",
             "## Every variant", ""]
    parts += [variant_section(f, exports[f["name"]]) for f in facts]
    return "\n".join(parts)
