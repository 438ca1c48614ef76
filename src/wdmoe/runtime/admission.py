"""Continuous batching's bookkeeping, without the model: which requests wait, which run, who is admitted and retired.

    add(item)    -> waits (first come, first served)
    admit()      -> drops cancelled running items; moves waiting ones into the batch while it has fewer than
                    `max_batch`; a cancelled waiting item and one asking for no tokens retire at once
    admit_waiting() -> the waiting part of admit alone (the running batch untouched: a step may be running it)
    batch()      -> the running items the next forward step runs: all of them, or with `prefill_first` the ones not
                    started yet alone (their prefills in a step of their own) while there are any
    take_done()  -> the running items that finished in the last step, out of the batch (the order kept)

Contract: pure and torch-free, no clock, no lock, no I/O, so the live scheduler (`wdmoe.runtime.scheduler`, which
adds the lock, the forward step and the timestamps) and the multi-user simulator (`wdmoe.sim.cell`, which adds a
modeled clock) admit and retire by this one rule, and a simulated cell forms the same batches as the server.

Why `prefill_first` (the serving engine's rule): with every step mixed, a request that arrives during a step waits
for it and then prefills in a step that also carries every running request's decode token, so its time to first
token is (the rest of the step in progress) + (a step of the whole batch and its prompt), which grows with the
batch. With its prefill first, it is (the rest of the step in progress) + (a prefill with only the requests that
arrived with it), at most one step more than alone, as vLLM's default scheduler did before chunked prefill. The
price: the decodes skip that step (TPOT and throughput pay one prefill step per arrival instead of its rows in a
shared step); requests arriving at every step would hold the decodes back until the batch is full. The serving
scheduler also takes the rest of the step in progress away (`preempt`, wdmoe.runtime.scheduler): admission at a
MoE layer of a running step is the same `admit_waiting`.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, Protocol, TypeVar


class Admittable(Protocol):
    """What admission reads of a request, and the reason it writes when it retires one."""

    cancelled: bool
    finish_reason: str | None

    @property
    def max_tokens(self) -> int: ...

    @property
    def started(self) -> bool: ...  # its prefill has run


Item = TypeVar("Item", bound=Admittable)


class Slots(Generic[Item]):
    """The waiting queue and the running batch of one model (module docstring)."""

    def __init__(self, max_batch: int, prefill_first: bool = False) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch = {max_batch}: at least one sequence must run")
        self.max_batch = max_batch
        self.prefill_first = prefill_first
        self.waiting: deque[Item] = deque()
        self.running: list[Item] = []

    def add(self, item: Item) -> None:
        self.waiting.append(item)

    def admit(self) -> list[Item]:
        """Admit waiting items as room allows; returns those retired without running (finish_reason set)."""
        retired: list[Item] = []
        keep = []
        for item in self.running:
            if item.cancelled:
                _retire(item, "cancelled", retired)
            else:
                keep.append(item)
        self.running = keep
        return retired + self.admit_waiting()

    def admit_waiting(self) -> list[Item]:
        """`admit` without touching the running items (a step runs them): waiting items into the batch as room
        allows; returns the waiting ones retired without running."""
        retired: list[Item] = []
        while self.waiting and len(self.running) < self.max_batch:
            item = self.waiting.popleft()
            if item.cancelled:
                _retire(item, "cancelled", retired)
            elif item.max_tokens <= 0:
                _retire(item, "length", retired)
            else:
                self.running.append(item)
        return retired

    def batch(self) -> list[Item]:
        """The running items of the next step, in batch order (module docstring)."""
        if self.prefill_first:
            fresh = [item for item in self.running if not item.started]
            if fresh:
                return fresh
        return list(self.running)

    def take_done(self) -> list[Item]:
        """The running items with a finish_reason, taken out of the batch."""
        done = [s for s in self.running if s.finish_reason is not None]
        if done:
            self.running = [s for s in self.running if s.finish_reason is None]
        return done

    def take_running(self) -> list[Item]:
        """Every running item, out of the batch (after a failed step)."""
        failed, self.running = self.running, []
        return failed


def _retire(item: Item, reason: str, into: list[Item]) -> None:
    item.finish_reason = reason
    into.append(item)
