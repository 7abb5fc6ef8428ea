"""``lorabench.load_peft``: every variant that ``export_peft`` writes comes back with the same outputs
(as the variant that reads its PEFT method), folders written by PEFT itself load to PEFT's outputs,
``lorabench eval`` puts a PEFT folder beside ours in one table, and what lorabench cannot read is
refused with a message naming it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import TARGETS, make_batch, outputs, train_steps

import lorabench
from lorabench import VariantError
from lorabench.adapters import registry
from lorabench.adapters.conv import linear_variants
from lorabench.errors import AdapterFileError
from lorabench.peft_import import readers

peft = pytest.importorskip("peft")
pytestmark = [pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
              pytest.mark.filterwarnings("ignore:fan_in_fan_out is set to:UserWarning")]
R = 4
#: Exported but not read back yet: the PEFT methods lorabench writes and has no reader for.
UNREAD = {"ADALORA", "UNILORA"}
# qlora's exported LoRA sits on a 4-bit base, which a fresh full-precision model is not.
OPTIONS = {"adalora": {"init_r": R, "target_r": 2}, "qlora": None, "flylora": {"r": 16, "k": 4},
           "bd_lora": {"r": R, "blocks": 2}}


def exported(variant, arch, make_model, folder):
    """A trained ``variant`` exported to ``folder`` (None when PEFT's format cannot express it)."""
    fields = {f.name for f in dataclasses.fields(registry.get(variant).Options)}
    opts = OPTIONS.get(variant, {"r": R} if "r" in fields else {})
    model = lorabench.apply(make_model(arch), variant, targets=TARGETS[arch], **opts)
    lorabench.prepare(model, [make_batch()])
    train_steps(model, make_batch())
    try:
        lorabench.export_peft(model, folder)
    except VariantError:
        return None
    return model


CASES = [(v, "bert") for v in linear_variants() if v != "qlora"] + [("lora", "gpt2"), ("dora", "llama")]


@pytest.mark.parametrize("variant, arch", CASES, ids=[f"{v}-{a}" for v, a in CASES])
def test_export_then_load_peft_gives_the_same_outputs(variant, arch, make_model, tmp_path):
    model = exported(variant, arch, make_model, tmp_path)
    if model is None:
        pytest.skip(f"{variant} is not exportable to PEFT's format")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    method = "DORA" if config.get("use_dora") else config["peft_type"]
    if method in UNREAD:
        with pytest.raises(VariantError, match=f"PEFT method {method} has no lorabench reader; .*LORA \\(as lora\\)"):
            lorabench.load_peft(make_model(arch), tmp_path)
        return
    loaded = lorabench.load_peft(make_model(arch), tmp_path)
    assert loaded.lorabench_state.variant == readers()[method].name  # e.g. an exported PiSSA reads as lora
    torch.testing.assert_close(outputs(loaded, make_batch()), outputs(model, make_batch()), atol=1e-5, rtol=0)


def test_every_exported_method_but_the_unread_has_a_reader():
    assert set(readers()) == {"LORA", "DORA", "VERA", "MISS", "RANDLORA"}
    assert not UNREAD & set(readers())


@pytest.mark.parametrize("kind", ["lora-rslora", "dora", "vera-regenerated"])
def test_folders_written_by_peft_load_to_peft_outputs(kind, make_model, tmp_path):
    config = {"lora-rslora": peft.LoraConfig(r=R, lora_alpha=16, use_rslora=True, target_modules=TARGETS["bert"],
                                             task_type="SEQ_CLS"),
              "dora": peft.LoraConfig(r=R, lora_alpha=16, use_dora=True, target_modules=["query", "value"],
                                      task_type="SEQ_CLS"),
              "vera-regenerated": peft.VeraConfig(r=R, save_projection=False, target_modules=["query", "value"],
                                                  task_type="SEQ_CLS")}[kind]
    theirs = peft.get_peft_model(make_model("bert"), config)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))  # every trained tensor off its init
    theirs.save_pretrained(tmp_path)
    ours = lorabench.load_peft(make_model("bert"), tmp_path)
    torch.testing.assert_close(outputs(ours, make_batch()), outputs(theirs.eval(), make_batch()), atol=1e-5, rtol=0)


def peft_folder(make_model, tmp_path, config) -> Path:
    peft.get_peft_model(make_model("bert"), config).save_pretrained(tmp_path)
    return tmp_path


def test_a_method_lorabench_lacks_is_named(make_model, tmp_path):
    folder = peft_folder(make_model, tmp_path, peft.IA3Config(target_modules=["query", "value"],
                                                              feedforward_modules=[], task_type="SEQ_CLS"))
    with pytest.raises(VariantError, match=r"PEFT method IA3 has no lorabench reader; lorabench reads PEFT folders "
                                           r"of DORA \(as dora\), LORA \(as lora\), MISS \(as miss\)"):
        lorabench.load_peft(make_model("bert"), folder)


def test_an_option_without_counterpart_is_named(make_model, tmp_path):
    config = peft.LoraConfig(r=R, target_modules=["query", "value"], rank_pattern={"query": 2}, task_type="SEQ_CLS")
    folder = peft_folder(make_model, tmp_path, config)
    with pytest.raises(VariantError, match=r"PEFT LORA adapter sets rank_pattern=\{'query': 2\}, which lorabench's "
                                           r"lora has no counterpart for"):
        lorabench.load_peft(make_model("bert"), folder)


def test_a_residual_pissa_folder_says_to_convert(make_model, tmp_path):
    config = peft.LoraConfig(r=R, target_modules=["query"], init_lora_weights="pissa", task_type="SEQ_CLS")
    folder = peft_folder(make_model, tmp_path, config)
    with pytest.raises(VariantError, match="init_lora_weights='pissa'.*residual.*path_initial_model_for_weight_conversion"):
        lorabench.load_peft(make_model("bert"), folder)


def test_a_pickled_adapter_is_refused(make_model, tmp_path):
    exported("lora", "bert", make_model, tmp_path)
    (tmp_path / "adapter_model.safetensors").rename(tmp_path / "adapter_model.bin")
    with pytest.raises(AdapterFileError, match="adapter_model.bin is a pickle, which lorabench never loads; convert"):
        lorabench.load_peft(make_model("bert"), tmp_path)


def test_a_base_with_other_layers_is_refused(make_model, tmp_path):
    from transformers import BertForSequenceClassification

    exported("lora", "bert", make_model, tmp_path)
    deeper = make_model("bert").config
    deeper.num_hidden_layers = 3
    with pytest.raises(AdapterFileError, match="does not fit this model as a lora adapter: no tensor"):
        lorabench.load_peft(BertForSequenceClassification(deeper).eval(), tmp_path)


GLUE = Path(__file__).resolve().parents[2] / "shared/data/glue"


@pytest.mark.skipif(not (GLUE / "SST-2").is_dir(), reason=f"GLUE data not found at {GLUE}")
def test_lorabench_eval_puts_a_peft_folder_beside_ours(tmp_path, capsys):
    from lorabench.commands import main
    from lorabench.models import load_model

    model, _ = load_model("minilm", "sst2", layers=2, pooling="cls")
    lorabench.apply(model, "lora", r=R)
    train_steps(model, {"input_ids": torch.tensor([[101, 2307, 3185, 102], [101, 6659, 2143, 102]]),
                        "attention_mask": torch.ones(2, 4, dtype=torch.long), "labels": torch.tensor([1, 0])})
    lorabench.save_adapter(model, tmp_path / "ours")
    lorabench.export_peft(model, tmp_path / "peft")
    rc = main(["eval", str(tmp_path / "ours"), str(tmp_path / "peft"), "--task", "sst2", "--data-dir", str(GLUE),
               "--layers", "2", "--eval-limit", "32", "--max-length", "32", "--json", str(tmp_path / "rows.json")])
    assert rc == 0 and "lora (PEFT)" in capsys.readouterr().out
    ours, theirs = json.loads((tmp_path / "rows.json").read_text())
    assert (ours["peft"], theirs["peft"]) == (False, True)
    assert theirs["metrics"] == ours["metrics"]  # the same adapter, read from either format
