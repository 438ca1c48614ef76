"""Continuous batching: which sequences run in the next forward step, and what each does with its logits.

    add(seq)    -> waits
    step()      -> admits waiting sequences (up to max_batch running), drops cancelled ones, runs ONE forward step
                   over the step's batch (`Slots.batch`: every running sequence, prefills and decode tokens
                   together, `DistributedMoE.step_segments`; with `prefill_first` the new ones alone while there
                   are any), lets each pick its token (`TokenPicker`), retires the finished ones; with `preempt`,
                   requests that arrive during a decode step restart it with them or prefill inside it (below)
    cancel(seq) -> retired at the next step

Admission and retirement are `wdmoe.runtime.admission.Slots` (torch-free): the multi-user simulator
(`wdmoe.sim.cell`) batches by the same rule, at step boundaries (it does not preempt).

Preemptive prefill (`preempt`, the serving engine's default with `prefill_first`): a request that arrives while a
decode step runs does not wait for the end of that step. At each MoE layer of the step, before its experts run,
the step may pause (`DistributedMoE.step_segments`'s `pause`) and admit the requests that arrived:
- at the step's first MoE layer (with `restart`, the default), the step is abandoned (`LateArrivals`) and run
  again from the start with them, as a mixed step: what is thrown away is the embedding and the first attention
  of the running batch, and their prompts share a step with the decode tokens, as in a mixed schedule;
- at a later MoE layer, their prefill runs as a step of its own inside the paused step (which keeps its state
  aside meanwhile), then the paused step goes on.
Their first token then comes after (a mixed step) or (the rest of the layer in progress) + (their prefill), where
it came after (the rest of the step in progress) + (their prefill). That matters most to a closed-loop client: its
next request arrives just after the step that ended the last one (before that step's first MoE layer, nearly
always), so without preemption it waits for nearly a whole step. A restarted step is mixed, and has no pauses:
what arrives during it waits for its end. bench/batching.py measures the schedules side by side
(docs/benchmarks.md).

A sequence finishes on an end-of-sequence token ("stop", the token kept, as transformers' generate keeps it), a
stop string in its decoded new text ("stop"), `max_tokens` ("length"), a cancel ("cancelled") or an error ("error",
the exception in `Sequence.error`). The scheduler is
single-threaded: the serving engine (wdmoe.serve.engine) calls it from its worker thread only; `add` and `cancel`
it guards with a lock, because clients call them from other threads.

Failures stay with the request that caused them, where they can be told apart: an exception while a sequence
picks its token (its sampling, its stop check, its `on_token` callback) ends that sequence only; a forward step
that raises is run again sequence by sequence (a cache grows only after a step succeeded, so a failed step leaves
none half-written), and only those that fail alone end with their exception. Lost devices
(`wdmoe.errors.DevicesUnavailable`) are nobody's fault and not retried: every sequence of the step ends with it.

Radio: before each step the channel is derived from the oldest running request's seed and step number
(`WirelessDecider.seed_step`), so a seeded request alone is reproducible under a latency-aware policy; batched, the
policy decides over every request's tokens together (it shares the bandwidth among them), so what a request gets
under such a policy depends on its company, as in a real cell.

Telemetry: each step's `StepRecord` holds the rows of every sequence; a sequence keeps (step, its rows) per step
(`StepShare`) and its summary is `wdmoe.runtime.telemetry.request_summary` of those.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from wdmoe.errors import DevicesUnavailable
from wdmoe.runtime.admission import Slots
from wdmoe.runtime.batch import SequenceCache
from wdmoe.runtime.sampling import Sampling, TokenPicker, batch_greedy
from wdmoe.runtime.telemetry import StepShare, request_summary

if TYPE_CHECKING:
    from wdmoe.runtime.model import DistributedMoE

TokenCallback = Callable[[int], None]
_ids = itertools.count()


@dataclass(eq=False)
class Sequence:
    """One request's state while it waits or runs (module docstring)."""

    prompt: list[int]
    sampling: Sampling
    picker: TokenPicker
    top_n: int = 0
    on_token: TokenCallback | None = None
    id: int = field(default_factory=lambda: next(_ids))
    cache: SequenceCache = field(default_factory=SequenceCache)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    parts: list[StepShare] = field(default_factory=list)
    finish_reason: str | None = None
    cancelled: bool = False
    arrival_s: float = field(default_factory=time.perf_counter)
    first_token_s: float | None = None
    done_s: float | None = None
    channel_seed: int = field(default_factory=lambda: secrets.randbits(63))  # the request's seed when it has one
    error: Exception | None = None  # why it ended, when finish_reason is "error"

    @property
    def max_tokens(self) -> int:
        return self.sampling.max_tokens

    @property
    def started(self) -> bool:
        return bool(self.tokens)

    @property
    def next_input(self) -> list[int]:
        return self.prompt if self.cache.length == 0 else self.tokens[-1:]


class Scheduler:
    """Admits, steps and retires sequences of one model (module docstring)."""

    def __init__(self, model: DistributedMoE, max_batch: int = 64, eos_ids: set[int] | None = None,
                 decode: Callable[[list[int]], str] | None = None, prefill_first: bool = False,
                 preempt: bool = False) -> None:
        # admission, retirement and each step's batch (`wdmoe.runtime.admission`, which says why prefill_first)
        self.slots: Slots[Sequence] = Slots(max_batch, prefill_first)
        self.preempt = preempt  # requests arriving during a decode step prefill at its next MoE layer (docstring)
        self.restart = True  # with preempt: arrivals before the step's first MoE layer restart it (docstring)
        self._first_pause = False
        self._retired_in_step: list[Sequence] = []  # retired at a pause of the running step (cancelled, no tokens)
        self.model = model
        self.eos_ids = eos_ids or set()
        self.decode = decode
        self._lock = threading.Lock()

    @property
    def max_batch(self) -> int:
        return self.slots.max_batch

    @max_batch.setter
    def max_batch(self, value: int) -> None:  # takes effect at the next admission
        if value < 1:
            raise ValueError(f"max_batch = {value}: at least one sequence must run")
        self.slots.max_batch = value

    @property
    def waiting(self) -> deque[Sequence]:
        return self.slots.waiting

    @property
    def running(self) -> list[Sequence]:
        return self.slots.running

    def new(self, prompt: list[int], sampling: Sampling, top_n: int = 0,
            on_token: TokenCallback | None = None) -> Sequence:
        if not prompt:
            raise ValueError("a sequence needs a prompt of at least one token")
        vocab = int(self.model.config.vocab_size)
        seq = Sequence(list(prompt), sampling, TokenPicker(sampling, vocab), top_n, on_token)
        if sampling.seed is not None:
            seq.channel_seed = sampling.seed % 2**63
        return seq

    def add(self, seq: Sequence) -> None:
        with self._lock:
            self.slots.add(seq)

    def cancel(self, seq: Sequence) -> None:
        seq.cancelled = True

    @property
    def busy(self) -> bool:
        with self._lock:
            return bool(self.running or self.waiting)

    def step(self) -> list[Sequence]:
        """Admit, run one forward step, retire (module docstring); returns the sequences retired by this step."""
        retired = self._admit()
        batch = self.slots.batch()
        if batch:
            self._first_pause = True
            self._run(batch, self._prefill_arrivals if self.preempt else None)
        retired += self._retired_in_step
        self._retired_in_step = []
        return retired + self._take_done()

    def _run(self, batch: list[Sequence], pause: Callable[[], None] | None = None) -> None:
        """One forward step over `batch` (`pause`: as `DistributedMoE.step_segments`'s); a failure ends only the
        sequences that fail alone (module docstring)."""
        try:
            self._forward(batch, pause)
        except LateArrivals as late:  # the step again, from the start, with them (module docstring)
            self._run(batch + late.sequences, pause)
        except DevicesUnavailable as exc:
            _fail(batch, exc)
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch, exc)
            else:  # whose fault? each alone again (module docstring)
                for seq in batch:
                    try:
                        self._forward([seq])
                    except Exception as alone:
                        _fail([seq], alone)

    def _prefill_arrivals(self) -> None:
        """At a MoE layer of the running decode step, which pauses: admit the requests that arrived since it
        began and run their prefill now, in a step of their own inside it (module docstring)."""
        first, self._first_pause = self._first_pause, False
        if not self.slots.waiting:  # read without the lock: a request added just after waits for the next pause
            return
        with self._lock:
            before = len(self.slots.running)
            retired = self.slots.admit_waiting()
            fresh = self.slots.running[before:]
        self._retired_in_step += self._retire_now(retired)
        if fresh and first and self.restart:
            raise LateArrivals(fresh)
        if fresh:
            self._run(fresh)

    def _forward(self, batch: list[Sequence], pause: Callable[[], None] | None = None) -> None:
        """One forward step over `batch`, and each sequence's token from it."""
        wireless = self.model.wireless
        if wireless is not None:  # the channel of this step: the oldest request's seed and step, no shared state
            wireless.seed_step(batch[0].channel_seed, len(batch[0].tokens))
        logits, record = self.model.step_segments([s.next_input for s in batch], [s.cache for s in batch], pause)
        logits = logits.cpu()  # (N, V)
        logp = torch.log_softmax(logits, dim=-1)  # row by row, as each request alone
        now = time.perf_counter()
        greedy = batch_greedy([seq.picker for seq in batch], logits)  # greedy ones' tokens, for all at once
        start = 0
        for row, seq in enumerate(batch):
            first = not seq.tokens
            width = len(seq.prompt) if first else 1
            if record is not None:
                seq.parts.append(StepShare(record, start, start + width, first))
            start += width
            try:
                self._take_token(seq, logits[row], logp[row], now, greedy[row])
            except Exception as exc:  # this sequence's own sampling or callback: it alone ends
                _fail([seq], exc)

    def fail_running(self) -> list[Sequence]:
        """The running sequences, taken out of the batch after a failed step (their caches emptied)."""
        failed = self.slots.take_running()
        for seq in failed:
            seq.cache.release()
        return failed

    def _admit(self) -> list[Sequence]:
        """Waiting sequences into the batch, as room allows; cancelled ones (and max_tokens = 0) retire at once."""
        with self._lock:
            retired = self.slots.admit()
        return self._retire_now(retired)

    @staticmethod
    def _retire_now(retired: list[Sequence]) -> list[Sequence]:
        """Sequences admission retired without running: their end time now, their KV slot free."""
        now = time.perf_counter()
        for seq in retired:
            seq.done_s = now
            seq.cache.release()  # its KV slot, for the next sequence (the result may keep `seq` alive)
        return retired

    def _take_token(self, seq: Sequence, logits: torch.Tensor, logp: torch.Tensor, now: float,
                    token: int | None = None) -> None:
        """`token`: the request's pick when the batch made it (`batch_greedy`), else its picker's."""
        if token is None:
            token, logp = seq.picker.pick(logits, logp)
        seq.tokens.append(token)
        seq.logprobs.append(float(logp[token]))
        seq.top_logprobs.append(top_logprobs(logp, seq.top_n))
        if seq.first_token_s is None:
            seq.first_token_s = now
        if seq.on_token is not None:
            seq.on_token(token)
        if (token in self.eos_ids and not seq.sampling.ignore_eos) or self._stopped(seq):
            seq.finish_reason = "stop"
        elif len(seq.tokens) >= seq.sampling.max_tokens:
            seq.finish_reason = "length"

    def _stopped(self, seq: Sequence) -> bool:
        """A stop string in the decoded new text (a stop string may span tokens)."""
        stop = seq.sampling.stop
        return bool(stop) and self.decode is not None and any(s in self.decode(seq.tokens) for s in stop)

    def _take_done(self) -> list[Sequence]:
        done = self.slots.take_done()
        now = time.perf_counter()
        for seq in done:
            seq.done_s = now
            seq.cache.release()
        return done

    def summary(self, seq: Sequence) -> dict[str, Any]:
        """The request's telemetry summary (`wdmoe.runtime.telemetry.request_summary`)."""
        return request_summary(seq.parts, self.model.num_devices)


class LateArrivals(Exception):  # not an error: the step starts again with them
    """Raised at the first MoE layer of a decode step when requests arrived: the step is run again with them."""

    def __init__(self, sequences: list[Sequence]) -> None:
        super().__init__(f"{len(sequences)} requests arrived before the step's first MoE layer")
        self.sequences = sequences


def _fail(seqs: list[Sequence], exc: Exception) -> None:
    for seq in seqs:
        seq.finish_reason, seq.error = "error", exc


def top_logprobs(logp: torch.Tensor, n: int) -> dict[int, float]:
    """The n most probable tokens of a (V,) log-probability row and their log p (n <= 0: empty)."""
    if n <= 0:
        return {}
    values, index = torch.topk(logp, min(n, logp.shape[-1]))
    return {int(i): float(v) for v, i in zip(values.tolist(), index.tolist(), strict=True)}
