"""The serving engine: one `DistributedMoE`, continuous batching on one worker thread, requests queued in front.

Contract: `Engine.start(ids, sampling, ...)` hands a generation to the scheduler (wdmoe.runtime.scheduler) and
returns a `Handle` at once; the request joins the running batch at the next forward step, so concurrent requests
share every step (and every MoE layer's dispatch to the devices) instead of queueing behind each other. Requests
that arrived meanwhile prefill first, in a step of their own (`prefill_first`, why in wdmoe.runtime.admission), and
one that arrives while a decode step runs does not wait for its end: the step pauses at its next MoE layer for the
prefill (`preempt`, wdmoe.runtime.scheduler). A new request's first token comes at most one step later than it
would alone.
`Handle.cancel()` retires it at the next step (a client gone); its future then holds the tokens so far, with
finish_reason "cancelled". A request that fails (its own error, or every request of a step when devices are lost:
wdmoe.runtime.scheduler says how a failure is kept to the request that caused it) gets the exception in its future,
and the engine goes on with the others.

The worker thread runs one step per job and queues the next step behind whatever else was submitted meanwhile
(`submit`: prompt scoring, a policy change, the between-requests hooks), so those run between two steps. `QueueFull`
is raised when `max_queue` requests already wait besides the `max_batch` that may run (`--max-queue N`: N
waiting). Every finished forward step reaches
the telemetry sinks (metrics, dashboard) from the worker thread; the model's telemetry is cleared after each step,
so a long-running server holds no history beyond what the sinks aggregate and the running requests hold.
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
from wdmoe.runtime.sampling import GREEDY_BELOW as GREEDY_BELOW
from wdmoe.runtime.sampling import Sampling as Sampling
from wdmoe.runtime.sampling import choice_seed as choice_seed
from wdmoe.runtime.scheduler import Scheduler, Sequence, TokenCallback, top_logprobs
from wdmoe.runtime.telemetry import StepRecord

P = ParamSpec("P")
R = TypeVar("R")


class QueueFull(RuntimeError):
    """More requests wait than the server accepts; the client should retry later."""


@dataclass(frozen=True)
class Generation:
    """One prompt's result: new tokens, their log-probabilities, and the request's telemetry summary."""

    prompt_ids: list[int]
    tokens: list[int]
    logprobs: list[float]  # log p(token) of each new token under the unprocessed logits
    top_logprobs: list[dict[int, float]]  # per new token, the top-n tokens and their log p (n = 0: empty)
    finish_reason: str  # "stop" (EOS or a stop string), "length", or "cancelled"
    ttft_s: float  # measured wall time from arrival to the first new token
    wall_s: float  # measured wall time from arrival to the end
    summary: dict[str, Any] = field(default_factory=dict)  # wdmoe.runtime.telemetry.request_summary


@dataclass(frozen=True)
class PromptScores:
    """Scores of a prompt of T tokens from one forward pass."""

    logprobs: list[float]  # (T-1,) log p(ids[i] | ids[:i]), i >= 1
    top_logprobs: list[dict[int, float]]  # (T-1,) the top-n tokens at each of those positions
    next_logprobs: np.ndarray  # (V,) log p of the token after the prompt
    summary: dict[str, Any]


@dataclass(frozen=True)
class Handle:
    """A request handed to the engine: its future result, and how to retire it early."""

    future: Future[Generation]
    sequence: Sequence
    engine: Engine

    def cancel(self) -> None:
        """Retire the request at the next step (its future then holds the tokens so far)."""
        self.engine.scheduler.cancel(self.sequence)


class Engine:
    """Serves one model: a single worker thread runs every model call, `max_batch` requests per forward step at
    most; telemetry goes to `sinks`."""

    def __init__(self, model: Any, name: str = "wdmoe", max_queue: int = 64, max_batch: int = 64,
                 prefill_first: bool = True, preempt: bool = True) -> None:
        self.model = model
        self.name = name
        self.max_queue = max_queue  # requests that may wait besides the max_batch running ones; beyond it QueueFull
        self.sinks: list[Callable[[StepRecord], None]] = []
        self.failure_sinks: list[Callable[[int], None]] = []
        self.between_requests: list[Callable[[], None]] = []  # run on the worker thread after each call
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wdmoe-engine")
        # Tokenizing a long prompt takes a while: one thread of its own keeps it off the event loop (and serialized:
        # a fast tokenizer is not meant to be called from several threads at once).
        self._tokenize_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wdmoe-tokenize")
        # A finished request's telemetry summary (its rows of every step it ran in) is built here, off the worker
        # thread, so the next forward step does not wait for it.
        self._summary_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wdmoe-summary")
        self.max_token_chars = _max_token_chars(model.tokenizer)
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._steps: list[StepRecord] = []
        model.telemetry.listeners.append(self._on_step)
        self.scheduler = Scheduler(model, max_batch, self.eos_token_ids, self.decode, prefill_first, preempt)
        self._futures: dict[int, Future[Generation]] = {}  # by sequence id, while pending
        self._stepping = False  # a step job is queued or running on the worker thread

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
        """Requests handed in and not finished: running + waiting."""
        return self._pending

    @property
    def slots(self) -> int:
        """Requests that may run at once (one forward step's batch)."""
        return self.scheduler.max_batch

    @property
    def running(self) -> int:
        return min(len(self.scheduler.running), self._pending)

    @property
    def waiting(self) -> int:
        return max(0, self._pending - self.running)

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
    def _reserve(self) -> None:
        with self._pending_lock:
            if self._pending - self.slots >= self.max_queue:
                raise QueueFull(f"{self._pending - self.slots} requests wait besides the {self.slots} that may run, "
                                f"the limit is {self.max_queue} waiting (--max-queue); retry later")
            self._pending += 1

    def submit(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Run `fn` on the worker thread, between two forward steps."""
        self._reserve()
        future = self._executor.submit(fn, *args, **kwargs)
        future.add_done_callback(self._done)
        return future

    def start(self, ids: list[int], sampling: Sampling, top_n: int = 0,
              on_token: TokenCallback | None = None) -> Handle:
        """Hand a generation to the scheduler (module docstring); `on_token` is called on the worker thread with
        each new token. Raises QueueFull."""
        seq = self.scheduler.new(ids, sampling, top_n, on_token)
        self._reserve()
        future: Future[Generation] = Future()
        with self._pending_lock:
            self._futures[seq.id] = future
            self.scheduler.add(seq)
            run = not self._stepping
            self._stepping = True
        if run:
            self._executor.submit(self._step)
        return Handle(future, seq, self)

    def generate(self, ids: list[int], sampling: Sampling, top_n: int = 0, on_token: TokenCallback | None = None,
                 cancel: threading.Event | None = None) -> Generation:
        """`start` and wait (never call it on the worker thread); a set `cancel` event cancels the request."""
        if threading.current_thread().name.startswith("wdmoe-engine"):
            raise RuntimeError("Engine.generate waits for the worker thread; on the worker thread use Engine.start")
        handle = self.start(ids, sampling, top_n, on_token)
        while True:
            with contextlib.suppress(TimeoutError):
                return handle.future.result(timeout=0.05)
            if cancel is not None and cancel.is_set():
                handle.cancel()

    def _step(self) -> None:
        """One forward step of the running batch (worker thread); queues the next behind other jobs."""
        try:
            retired = self.scheduler.step()
        except Exception as exc:  # not a request's failure (the scheduler keeps those): fail what runs, go on
            logging.getLogger(__name__).exception("a scheduler step failed")
            for seq in self.scheduler.fail_running():
                self._resolve(seq, exc)
            retired = []
        finally:
            self.model.telemetry.clear()
        for seq in retired:
            if seq.error is not None:
                logging.getLogger(__name__).error("request %d failed", seq.id, exc_info=seq.error)
            self._summary_executor.submit(self._resolve, seq, seq.error)
        with self._pending_lock:
            self._stepping = self.scheduler.busy
            again = self._stepping
        if again:
            with contextlib.suppress(RuntimeError):  # raised once the engine shuts down
                self._executor.submit(self._step)

    def _resolve(self, seq: Sequence, error: BaseException | None = None) -> None:
        with self._pending_lock:
            future = self._futures.pop(seq.id)
        self._done(future)  # released before the result is set: a client that has its answer sees the queue without it
        if error is not None:
            future.set_exception(error)
            return
        done = seq.done_s or time.perf_counter()
        first = seq.first_token_s if seq.first_token_s is not None else done
        future.set_result(Generation(
            prompt_ids=list(seq.prompt), tokens=list(seq.tokens), logprobs=list(seq.logprobs),
            top_logprobs=list(seq.top_logprobs), finish_reason=seq.finish_reason or "length",
            ttft_s=first - seq.arrival_s, wall_s=done - seq.arrival_s, summary=self.scheduler.summary(seq),
        ))

    def _done(self, _future: Future[Any]) -> None:
        with self._pending_lock:
            self._pending -= 1
        if self.between_requests:  # queued behind the jobs already waiting, after this one has answered
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
            logprobs=chosen, top_logprobs=[top_logprobs(row, top_n) for row in logp[:-1]],
            next_logprobs=logp[-1].numpy(),
            summary=self.model.summary(self._take_steps()),
        )

    def tokenize(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Run a tokenizing call (`wdmoe.serve.prompts`) on the tokenizer's thread."""
        return self._tokenize_executor.submit(fn, *args, **kwargs)

    def devices_alive(self) -> tuple[int, int]:
        """(devices the runtime has not declared dead, devices in all)."""
        runtime = self.model.runtime
        return self.model.num_devices - len(runtime.liveness.dead), self.model.num_devices

    def close(self) -> None:
        for seq in self.scheduler.running + list(self.scheduler.waiting):
            self.scheduler.cancel(seq)
        self._tokenize_executor.shutdown(wait=True, cancel_futures=True)
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._summary_executor.shutdown(wait=True)
        with self._pending_lock:
            left, self._futures = list(self._futures.values()), {}
        for future in left:  # requests the last steps did not reach: their clients hear why
            self._done(future)
            future.set_exception(RuntimeError("the engine closed before this request finished"))
        if self._on_step in self.model.telemetry.listeners:
            self.model.telemetry.listeners.remove(self._on_step)


def _max_token_chars(tokenizer: Any) -> int | None:
    """An upper bound on the characters one token covers (its vocabulary string is at least as long as the text
    it decodes to, for byte-level and word-piece vocabularies alike; +1 for a marker like SentencePiece's "▁")."""
    if tokenizer is None:
        return None
    vocab = tokenizer.get_vocab()
    return max((len(token) for token in vocab), default=1) + 1
