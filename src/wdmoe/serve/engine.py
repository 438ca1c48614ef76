"""The serving engine: one `DistributedMoE`, one worker thread, requests queued in front of it.

Contract: `Engine.submit(fn, ...)` runs `fn` on the single worker thread (the model is not re-entrant), or raises
`QueueFull` when `max_queue` requests already wait. `generate` and `prompt_logprobs` run there; every finished
forward step reaches the telemetry sinks (metrics, dashboard) from that thread. Telemetry is cleared after each
request, so a long-running server holds no history beyond what the sinks aggregate.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import numpy as np
import torch

from wdmoe.policy.base import Policy
from wdmoe.runtime.telemetry import StepRecord

P = ParamSpec("P")
R = TypeVar("R")
TokenCallback = Callable[[int], None]


GREEDY_BELOW = 1e-6


class QueueFull(RuntimeError):
    """More requests wait than the server accepts; the client should retry later."""


@dataclass(frozen=True)
class Sampling:
    """How to pick new tokens: greedy when temperature < GREEDY_BELOW (0, or so small that logits / temperature
    overflows to inf and sampling would see NaN probabilities; greedy is the limit it tends to)."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class Generation:
    """One prompt's result: new tokens, their log-probabilities, and the request's telemetry summary."""

    prompt_ids: list[int]
    tokens: list[int]
    logprobs: list[float]  # log p(token) of each new token under the unprocessed logits
    top_logprobs: list[dict[int, float]]  # per new token, the top-n tokens and their log p (n = 0: empty)
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    ttft_s: float  # measured wall time to the first new token
    wall_s: float
    summary: dict[str, Any] = field(default_factory=dict)  # DistributedMoE.summary of the request's steps


@dataclass(frozen=True)
class PromptScores:
    """Scores of a prompt of T tokens from one forward pass."""

    logprobs: list[float]  # (T-1,) log p(ids[i] | ids[:i]), i >= 1
    top_logprobs: list[dict[int, float]]  # (T-1,) the top-n tokens at each of those positions
    next_logprobs: np.ndarray  # (V,) log p of the token after the prompt
    summary: dict[str, Any]


class _Streamer:
    """transformers streamer: the first `put` is the prompt, each later one a new token."""

    def __init__(self, on_token: TokenCallback) -> None:
        self.on_token = on_token
        self.seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        for token in value.reshape(-1).tolist():
            self.on_token(int(token))

    def end(self) -> None:
        return None


class _StopWhen:
    """Stopping criterion: a cancel event (client gone) or a stop string in the decoded new text."""

    def __init__(self, cancel: threading.Event, stop: tuple[str, ...], decode: Callable[[list[int]], str],
                 prompt_len: int) -> None:
        self.cancel, self.stop, self.decode, self.prompt_len = cancel, stop, decode, prompt_len
        self.hit_stop = False

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = self.cancel.is_set()
        if self.stop and not done:
            text = self.decode(input_ids[0, self.prompt_len :].tolist())
            self.hit_stop = done = any(s in text for s in self.stop)
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool)


class Engine:
    """Serves one model: a single worker thread runs every model call; telemetry goes to `sinks`."""

    def __init__(self, model: Any, name: str = "wdmoe", max_queue: int = 64) -> None:
        self.model = model
        self.name = name
        self.max_queue = max_queue
        self.sinks: list[Callable[[StepRecord], None]] = []
        self.failure_sinks: list[Callable[[int], None]] = []
        self.between_requests: list[Callable[[], None]] = []  # run on the worker thread after each call
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wdmoe-engine")
        # Tokenizing a long prompt takes a while: one thread of its own keeps it off the event loop (and serialized:
        # a fast tokenizer is not meant to be called from several threads at once).
        self._tokenize_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wdmoe-tokenize")
        self.max_token_chars = _max_token_chars(model.tokenizer)
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._steps: list[StepRecord] = []
        model.telemetry.listeners.append(self._on_step)

    # -- model facts -----------------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    @property
    def eos_token_ids(self) -> set[int]:
        eos = self.model.hf_model.generation_config.eos_token_id
        return set() if eos is None else {int(e) for e in (eos if isinstance(eos, list) else [eos])}

    @property
    def pending(self) -> int:
        return self._pending

    def decode(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            return " ".join(str(i) for i in ids)
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def token_text(self, token: int) -> str:
        """One token's text, as the `tokens` of an OpenAI logprobs object."""
        if self.tokenizer is None:
            return str(token)
        return str(self.tokenizer.decode([token]))

    # -- queueing --------------------------------------------------------------------------------------------
    def submit(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        with self._pending_lock:
            if self._pending >= self.max_queue:
                raise QueueFull(f"{self._pending} requests are queued, the limit is {self.max_queue}; retry later")
            self._pending += 1
        future = self._executor.submit(fn, *args, **kwargs)
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: Future[Any]) -> None:
        with self._pending_lock:
            self._pending -= 1
        if self.between_requests:  # queued behind the requests already waiting, after this one has answered
            with contextlib.suppress(RuntimeError):  # raised once the engine shuts down
                self._executor.submit(self._run_hooks)

    def _run_hooks(self) -> None:
        """The between-requests hooks (e.g. applying a new plan), on the worker thread, so no request runs during
        them; a failing hook is logged and the server goes on."""
        for hook in self.between_requests:
            try:
                hook()
            except Exception:
                logging.getLogger(__name__).exception("between-requests hook %r failed", hook)

    def record_device_failure(self, device: int) -> None:
        """A backend reports that `device` failed; the sinks (the failure counter) hear of it."""
        for sink in self.failure_sinks:
            sink(device)

    def set_policy(self, policy: Policy | None, scenario: Any = None) -> None:
        self.submit(self.model.set_policy, policy, scenario).result()

    def _on_step(self, step: StepRecord) -> None:
        self._steps.append(step)
        for sink in self.sinks:
            sink(step)

    def _take_steps(self) -> list[StepRecord]:
        steps, self._steps = self._steps, []
        self.model.telemetry.clear()
        return steps

    # -- model calls (worker thread only) ------------------------------------------------------------------
    def prompt_logprobs(self, ids: list[int], top_n: int) -> PromptScores:
        """One forward pass over the prompt: log p(ids[i] | ids[:i]) for i >= 1 and the next-token scores."""
        self._take_steps()  # steps of direct model calls outside the engine are not this request's
        logits = self.model(torch.tensor([ids])).logits[0].float()  # (T, V)
        logp = torch.log_softmax(logits, dim=-1)
        chosen = logp[:-1].gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1).tolist()  # (T-1,)
        return PromptScores(
            logprobs=chosen, top_logprobs=[_top(row, top_n) for row in logp[:-1]], next_logprobs=logp[-1].numpy(),
            summary=self.model.summary(self._take_steps()),
        )

    def generate(self, ids: list[int], sampling: Sampling, top_n: int = 0, on_token: TokenCallback | None = None,
                 cancel: threading.Event | None = None) -> Generation:
        """New tokens after `ids` (KV cache), with their log-probabilities and the request's telemetry."""
        self._take_steps()
        start = time.perf_counter()
        first: list[float] = []

        def token_seen(token: int) -> None:
            if not first:
                first.append(time.perf_counter() - start)
            if on_token is not None:
                on_token(token)

        stop = _StopWhen(cancel or threading.Event(), sampling.stop, self.decode, len(ids))
        kwargs: dict[str, Any] = {}
        if sampling.temperature >= GREEDY_BELOW:
            kwargs = dict(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed % 2**63)
        else:
            kwargs = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        out = self.model.generate(
            torch.tensor([ids]), max_new_tokens=sampling.max_tokens, min_new_tokens=0, streamer=_Streamer(token_seen),
            stopping_criteria=[stop], output_logits=True, return_dict_in_generate=True, **kwargs,
        )
        tokens = out.sequences[0, len(ids) :].tolist()
        logps = [torch.log_softmax(step[0].float(), dim=-1) for step in out.logits]  # each (V,)
        hit_eos = bool(tokens) and tokens[-1] in self.eos_token_ids
        finish = "stop" if hit_eos or stop.hit_stop else "length"
        wall_s = time.perf_counter() - start
        return Generation(
            prompt_ids=list(ids), tokens=tokens, logprobs=[float(lp[t]) for lp, t in zip(logps, tokens, strict=True)],
            top_logprobs=[_top(lp, top_n) for lp in logps], finish_reason=finish,
            ttft_s=first[0] if first else wall_s, wall_s=wall_s, summary=self.model.summary(self._take_steps()),
        )

    def tokenize(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Run a tokenizing call (`wdmoe.serve.prompts`) on the tokenizer's thread."""
        return self._tokenize_executor.submit(fn, *args, **kwargs)

    def devices_alive(self) -> tuple[int, int]:
        """(devices the runtime has not declared dead, devices in all)."""
        runtime = self.model.runtime
        return self.model.num_devices - len(runtime.liveness.dead), self.model.num_devices

    def close(self) -> None:
        self._tokenize_executor.shutdown(wait=True, cancel_futures=True)
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self._on_step in self.model.telemetry.listeners:
            self.model.telemetry.listeners.remove(self._on_step)


def _top(logp: torch.Tensor, n: int) -> dict[int, float]:
    if n <= 0:
        return {}
    values, index = torch.topk(logp, min(n, logp.shape[-1]))
    return {int(i): float(v) for v, i in zip(values.tolist(), index.tolist(), strict=True)}


def _max_token_chars(tokenizer: Any) -> int | None:
    """An upper bound on the characters one token covers (its vocabulary string is at least as long as the text
    it decodes to, for byte-level and word-piece vocabularies alike; +1 for a marker like SentencePiece's "▁")."""
    if tokenizer is None:
        return None
    vocab = tokenizer.get_vocab()
    return max((len(token) for token in vocab), default=1) + 1
