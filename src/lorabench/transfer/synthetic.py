"""Synthetic task inputs from a generator LM prompted with a few real seed examples
(Trans-LoRA, Wang et al. 2024, arXiv 2405.17258, Sec. 3.1: the generator sees the few observed
task examples and writes new ones like them; the paper uses 5 seed examples).

Our prompt is a plain list continuation, not an instruction: a header naming the task's inputs,
the seeds as ``- <text>`` lines (in a different seeded order for each batch of prompts, so the
batches differ) and an open ``-``; the first line of each continuation is one synthetic input.
Sampling is top-p (nucleus) with a fixed torch seed, so a CPU run is repeatable; generation stops
once every row of a batch has ended its line (or after ``max_new_tokens``). Sentence-pair tasks
put ``a || b`` on each line and split it back. Empty and duplicate lines, and copies of a seed, are
dropped; generation continues until ``n`` inputs are collected or ``max_rounds`` batches ran
(by default twice the batches ``n`` needs, plus 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from ..data import Example

SEP = " || "  # between the two sentences of a pair task on one line

#: What the list in the prompt holds, per task (the generator is told nothing else).
HEADERS = {"sst2": "Sentences from movie reviews", "cola": "English sentences",
           "mrpc": "Pairs of sentences (first || second)", "rte": "Pairs of a text and a claim (text || claim)",
           "stsb": "Pairs of sentences (first || second)"}


@dataclass
class Generation:
    """How the generator samples: top-p ``top_p``, ``temperature``, at most ``max_new_tokens`` per input."""

    top_p: float = 0.95
    temperature: float = 1.0
    max_new_tokens: int = 24
    batch_size: int = 32
    max_rounds: int | None = None  # batches at most; None: twice the batches ``n`` needs, plus 4


class LineEnded(StoppingCriteria):
    """Stop once every row has produced a newline after the prompt."""

    def __init__(self, tokenizer, prompt_len: int):
        self.tokenizer, self.prompt_len = tokenizer, prompt_len

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        tails = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:])
        return all("\n" in t for t in tails)


def prompt_for(task, seeds: list[Example], order: list[int]) -> str:
    header = HEADERS.get(task.name, f"Inputs of the {task.display} task")
    lines = [seeds[i].text_a if seeds[i].text_b is None else f"{seeds[i].text_a}{SEP}{seeds[i].text_b}" for i in order]
    return f"{header}:\n" + "".join(f"- {' '.join(t.split())}\n" for t in lines) + "-"


def parse(line: str, pair: bool) -> Example | None:
    text = " ".join(line.split("\n")[0].split()).strip()
    if not text:
        return None
    if not pair:
        return Example(text, None, -1)
    a, _, b = text.partition(SEP.strip())
    a, b = a.strip(), b.strip()
    return Example(a, b, -1) if a and b else None


@torch.no_grad()
def generate(generator, tokenizer, task, seeds: list[Example], n: int, *, gen: Generation | None = None,
             seed: int = 0, progress: bool = True) -> tuple[list[Example], int]:
    """(``n`` synthetic unlabelled Examples, how many lines were sampled in all)."""
    gen = gen or Generation()
    pair = seeds[0].text_b is not None
    known = {(s.text_a.strip(), (s.text_b or "").strip()) for s in seeds}
    out: list[Example] = []
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues the last real token
    sampled = 0
    try:
        with tqdm(total=n, desc="generate", disable=not progress, unit="input", dynamic_ncols=True) as bar:
            rounds = gen.max_rounds if gen.max_rounds is not None else 2 * -(-n // gen.batch_size) + 4
            for _ in range(rounds):
                if len(out) >= n:
                    break
                rows = min(gen.batch_size, n - len(out))  # a whole batch only while many are missing
                prompts = [prompt_for(task, seeds, torch.randperm(len(seeds), generator=g).tolist())
                           for _ in range(rows)]
                enc = tokenizer(prompts, return_tensors="pt", padding=True)
                width = enc["input_ids"].shape[1]
                ids = generator.generate(**enc, do_sample=True, top_p=gen.top_p, temperature=gen.temperature,
                                         max_new_tokens=gen.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                         stopping_criteria=StoppingCriteriaList([LineEnded(tokenizer, width)]))
                for text in tokenizer.batch_decode(ids[:, width:], skip_special_tokens=True):
                    sampled += 1
                    ex = parse(text, pair)
                    key = None if ex is None else (ex.text_a, ex.text_b or "")
                    if ex is None or key in known or len(out) >= n:
                        continue
                    known.add(key)
                    out.append(ex)
                    bar.update(1)
    finally:
        tokenizer.padding_side = side
    return out, sampled
