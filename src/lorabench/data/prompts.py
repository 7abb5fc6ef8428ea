"""Prompt templates and label words: GLUE as next-token prediction for decoder-only models.

    fmt = prompt_format_fn("sst2")       # fmt(example) -> ("Review: ...\\nSentiment ...:", None)
    words = label_words("sst2")          # [" negative", " positive"], in label-index order

With ``head="lm"`` the model reads the prompt and its next-token logits at the final ":"
are scored on the label words' first tokens (``lorabench.models.PromptClassifier``), the
verbalizer idea of PET (Schick & Schuetze 2021, arXiv 2001.07676) and of LM-BFF (Gao, Fisch
& Chen 2021, arXiv 2012.15723).

Spacing: every template ends with ":" and no trailing space, and every label word starts
with a space. BPE and SentencePiece vocabularies spell a word after a space as one token
(GPT-2 "Ġpositive", Llama "▁positive"); a prompt ending in a space would make the model
predict a space-less word piece it rarely saw after a colon.

A template is versioned: change its text or words and bump ``version``, so the tokenized
cache (keyed by ``cache_key``) never serves stale prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import PromptError


@dataclass(frozen=True)
class Prompt:
    """One task's template (``{a}``, ``{b}`` = the example's texts) and label words."""

    template: str
    #: (label name, label word) in label-index order (the Hugging Face ``nyu-mll/glue`` order).
    labels: tuple[tuple[str, str], ...]
    version: int = 1

    @property
    def words(self) -> list[str]:
        return [word for _, word in self.labels]


_YES_NO = "(yes or no)?\nAnswer:"

PROMPTS: dict[str, Prompt] = {
    "sst2": Prompt(
        "Review: {a}\nSentiment (positive or negative):",
        (("negative", " negative"), ("positive", " positive")),
    ),
    "cola": Prompt(
        "Sentence: {a}\nIs this sentence grammatically correct " + _YES_NO,
        (("unacceptable", " no"), ("acceptable", " yes")),
    ),
    "mrpc": Prompt(
        "Sentence 1: {a}\nSentence 2: {b}\nDo both sentences mean the same thing " + _YES_NO,
        (("not_equivalent", " no"), ("equivalent", " yes")),
    ),
    "qqp": Prompt(
        "Question 1: {a}\nQuestion 2: {b}\nDo both questions ask the same thing " + _YES_NO,
        (("not_duplicate", " no"), ("duplicate", " yes")),
    ),
    "rte": Prompt(
        "Premise: {a}\nHypothesis: {b}\nDoes the premise imply the hypothesis " + _YES_NO,
        (("entailment", " yes"), ("not_entailment", " no")),
    ),
    "qnli": Prompt(
        "Question: {a}\nSentence: {b}\nDoes the sentence answer the question " + _YES_NO,
        (("entailment", " yes"), ("not_entailment", " no")),
    ),
    "mnli": Prompt(
        "Premise: {a}\nHypothesis: {b}\nDoes the premise imply the hypothesis (yes, maybe or no)?\nAnswer:",
        (("entailment", " yes"), ("neutral", " maybe"), ("contradiction", " no")),
    ),
    "wnli": Prompt(
        "Sentence 1: {a}\nSentence 2: {b}\nDoes sentence 1 imply sentence 2 " + _YES_NO,
        (("not_entailment", " no"), ("entailment", " yes")),
    ),
}


def _norm(name: str) -> str:
    return "".join(c for c in str(name).lower() if c.isalnum())


def get_prompt(task: Any) -> Prompt:
    """The Prompt of ``task`` (a TaskSpec or a name such as "SST-2"), checked against its labels."""
    name = _norm(task if isinstance(task, str) else task.name)
    if name == "stsb" or getattr(task, "is_regression", False):
        raise PromptError(
            f"{name} is a regression task and has no label words; use head='cls' (a regression head)"
        )
    prompt = PROMPTS.get(name)
    if prompt is None:
        raise PromptError(f"no prompt for task {name!r}; tasks with prompts: {', '.join(PROMPTS)}")
    names = getattr(task, "label_names", None)
    if names is not None and [_norm(n) for n in names] != [_norm(n) for n, _ in prompt.labels]:
        # A silent mismatch would swap the classes: fail and say where to fix it.
        raise PromptError(
            f"task {name} lists labels {tuple(names)} but its label words are defined for "
            f"{tuple(n for n, _ in prompt.labels)}; align PROMPTS[{name!r}] in lorabench/data/prompts.py"
        )
    return prompt


class PromptFormat:
    """``fmt(example) -> (prompt text, None)``: the whole prompt is one text, not a pair."""

    def __init__(self, task_name: str, prompt: Prompt):
        self.prompt = prompt
        self.cache_key = f"prompt:{task_name}:v{prompt.version}"
        self._pair = "{b}" in prompt.template

    def __call__(self, example: Any) -> tuple[str, None]:
        a = str(example.text_a).strip()
        if self._pair:
            if example.text_b is None:
                raise PromptError(f"{self.cache_key} needs a sentence pair but the example has no text_b")
            return self.prompt.template.format(a=a, b=str(example.text_b).strip()), None
        return self.prompt.template.format(a=a), None

    def __repr__(self) -> str:
        return f"PromptFormat({self.cache_key!r})"


def prompt_format_fn(task: Any) -> PromptFormat:
    """The formatter that turns an ``Example`` into the prompt of ``task`` (stable ``.cache_key``)."""
    prompt = get_prompt(task)
    return PromptFormat(_norm(task if isinstance(task, str) else task.name), prompt)


def label_words(task: Any) -> list[str]:
    """The label words of ``task`` in label-index order, each with its leading space."""
    return get_prompt(task).words


def label_token_ids(tokenizer, words: list[str], context: str = "Answer:") -> list[int]:
    """The first token of each label word as a model sees it right after a prompt's ":".

    Read off ``context + word`` rather than ``word`` alone: a SentencePiece tokenizer spells
    a lone " yes" as ["▁", "▁yes"], whose first token is the same for every word.
    """
    before = tokenizer(context, add_special_tokens=False)["input_ids"]
    ids = []
    for word in words:
        after = tokenizer(context + word, add_special_tokens=False)["input_ids"]
        if after[: len(before)] != before or len(after) == len(before):
            raise PromptError(f"label word {word!r} merges with the prompt's ':' in this tokenizer; "
                              "change the label words in lorabench/data/prompts.py")
        ids.append(after[len(before)])
    if len(set(ids)) != len(ids):
        shown = ", ".join(f"{w!r}->{i}" for w, i in zip(words, ids))
        raise PromptError(f"label words share a first token ({shown}); choose label words that start differently")
    return ids
