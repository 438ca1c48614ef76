"""MoE² generation (papers.md §5.8 step 5 [R]): route the prompt once (gate restricted to S*, top-k), then at every
step ask each chosen expert's worker for its next-token distribution and decode greedily from their weighted mixture.

Contract: `ensemble_generate(workers, index, weight, prompt, max_new_tokens)` returns the text and, per expert, the
compute seconds its worker spent; the experts share one tokenizer (`wdmoe.train.config.EXPERT_VOCAB_SIZE`), so the
mixture is over one vocabulary. Decoding stops at `</s>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from wdmoe.ensemble.aggregate import mix_next_token_logprobs
from wdmoe.ensemble.experts import BOS, ExpertWorker


@dataclass(frozen=True)
class Generation:
    text: str  # the continuation alone
    tokens: int
    compute_s: dict[str, float]  # per chosen expert, its worker's seconds


def ensemble_generate(
    workers: Sequence[ExpertWorker],
    index: Sequence[int],
    weight: Sequence[float],
    prompt: str,
    max_new_tokens: int = 32,
) -> Generation:
    tokenizer = workers[index[0]].tokenizer
    ids = list(tokenizer(prompt, add_special_tokens=BOS)["input_ids"])
    start, eos = len(ids), tokenizer.eos_token_id
    spent = {workers[n].name: 0.0 for n in index}
    w = torch.tensor(list(weight), dtype=torch.float32)
    for _ in range(max_new_tokens):
        answers = [workers[n].next_token_logprobs(ids) for n in index]
        for n, answer in zip(index, answers, strict=True):
            spent[workers[n].name] += answer.compute_s
        mixed = mix_next_token_logprobs(torch.stack([a.value for a in answers]), w)  # (V,)
        token = int(mixed.argmax())
        if token == eos:
            break
        ids.append(token)
    text = tokenizer.decode(ids[start:], skip_special_tokens=True)
    return Generation(str(text), len(ids) - start, spent)
