"""Per-request token choice: each request of a batch picks its next token with its own settings and generator.

Contract: `TokenPicker(sampling, vocab_size).pick(logits)` takes one request's (V,) fp32 logits of one step and
returns the token and log p(token) under the unprocessed logits (what OpenAI's `logprobs` report). The processing,
in OpenAI's order: `logit_bias` added; `frequency_penalty` x (times the token was generated) and
`presence_penalty` x (generated at all) subtracted; then greedy (temperature < GREEDY_BELOW) or temperature,
top-p and a draw from the request's own `torch.Generator` (seeded by `seed`, else from the OS). Nothing here reads
shared state: a request picks the same tokens from the same logits whatever else runs in its batch.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch

GREEDY_BELOW = 1e-6


@dataclass(frozen=True)
class Sampling:
    """How to pick new tokens: greedy when temperature < GREEDY_BELOW (0, or so small that logits / temperature
    overflows to inf and sampling would see NaN probabilities; greedy is the limit it tends to)."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0  # subtracted from a token's logit once it was generated (OpenAI: -2..2)
    frequency_penalty: float = 0.0  # x the number of times it was generated (OpenAI: -2..2)
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit), OpenAI: -100..100
    ignore_eos: bool = False  # go on past an end-of-sequence token up to max_tokens (vLLM's; benchmarks)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


def choice_seed(seed: int | None, choice: int) -> int | None:
    """The seed of choice `choice` of a request asking for n > 1 choices (choice 0 keeps the request's seed)."""
    return None if seed is None else (seed + choice * 0x9E3779B97F4A7C15) % 2**63


class TokenPicker:
    """One request's token choice (module docstring); `counts` holds how often each token was generated, kept
    where a penalty reads it (a request with a frequency or presence penalty)."""

    def __init__(self, sampling: Sampling, vocab_size: int) -> None:
        self.sampling = sampling
        self.generator = torch.Generator().manual_seed(
            sampling.seed % 2**63 if sampling.seed is not None else secrets.randbits(63))
        self.counts = torch.zeros(vocab_size, dtype=torch.float32)
        self.bias: torch.Tensor | None = None
        if sampling.logit_bias:
            self.bias = torch.zeros(vocab_size, dtype=torch.float32)
            for token, bias in sampling.logit_bias:
                self.bias[token] += bias

    def pick(self, logits: torch.Tensor, logp: torch.Tensor | None = None) -> tuple[int, torch.Tensor]:
        """(token, (V,) log-probabilities under the unprocessed logits) from one step's (V,) fp32 CPU logits;
        `logp`: their log-softmax when the caller computed it for the whole batch at once (row-wise, the same)."""
        logp = torch.log_softmax(logits, dim=-1) if logp is None else logp
        scores = self.process(logits)
        s = self.sampling
        if s.greedy:
            token = int(torch.argmax(scores))
        else:
            probs = torch.softmax(scores / s.temperature, dim=-1)
            if s.top_p < 1.0:
                probs = _top_p(probs, s.top_p)
            token = int(torch.multinomial(probs, 1, generator=self.generator))
        if s.frequency_penalty or s.presence_penalty:  # only the penalties read the counts
            self.counts[token] += 1
        return token, logp

    @property
    def stateless_greedy(self) -> bool:
        """Greedy without penalties: its token is the argmax of the logits plus its bias, nothing else read or
        written, so a batch picks it for all such requests at once (`batch_greedy`)."""
        s = self.sampling
        return s.greedy and not (s.frequency_penalty or s.presence_penalty)

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        s = self.sampling
        scores = logits if self.bias is None else logits + self.bias
        if s.frequency_penalty or s.presence_penalty:
            scores = scores - self.counts * s.frequency_penalty - (self.counts > 0).float() * s.presence_penalty
        return scores


def batch_greedy(pickers: list[TokenPicker], logits: torch.Tensor) -> list[int | None]:
    """The token of each `stateless_greedy` picker of a batch, None for the others (they `pick`): `logits` (N, V),
    row i the batch's i-th request's. One add of the biases of those that have one and one argmax over the rows:
    the same sums and the same first maximum as each row's own `pick` (greedy: argmax of logits + bias)."""
    rows = [row for row, picker in enumerate(pickers) if picker.stateless_greedy]
    tokens: list[int | None] = [None] * len(pickers)
    if not rows:
        return tokens
    scores = logits if len(rows) == len(pickers) else logits[rows]  # (len(rows), V)
    biases = [pickers[row].bias for row in rows]
    if all(bias is not None for bias in biases):
        scores = scores + torch.stack(biases)  # type: ignore[arg-type]
    elif any(bias is not None for bias in biases):
        scores = scores.clone()
        for i, bias in enumerate(biases):
            if bias is not None:
                scores[i] += bias
    for row, token in zip(rows, torch.argmax(scores, dim=-1).tolist(), strict=True):
        tokens[row] = token
    return tokens


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """`probs` restricted to the most probable tokens whose mass reaches `top_p` (at least one), renormalized."""
    sorted_probs, order = torch.sort(probs, descending=True)
    before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of the tokens ranked above each one
    sorted_probs = torch.where(before < top_p, sorted_probs, torch.zeros_like(sorted_probs))
    sorted_probs[0] = torch.clamp(sorted_probs[0], min=torch.finfo(probs.dtype).tiny)
    kept = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return kept / kept.sum()
