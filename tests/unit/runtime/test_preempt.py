"""Preemptive prefill (wdmoe.runtime.scheduler): a request that arrives while a decode step runs does not wait for
its end (it restarts the step with it before the step's first MoE layer, or prefills inside it at a later one),
and every request still gets what it gets alone."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from wdmoe.runtime.model import DistributedMoE
from wdmoe.runtime.moe_layer import RemoteExperts
from wdmoe.runtime.sampling import Sampling
from wdmoe.runtime.scheduler import Scheduler, Sequence
from wdmoe.runtime.telemetry import StepRecord

LOGPROB_TOL = 1e-4  # as tests/unit/runtime/test_batch.py: more rows in a product may round differently


def prompt(length: int, salt: int) -> list[int]:
    return [(5 * i + 11 * salt + 3) % 120 for i in range(length)]


def finish(scheduler: Scheduler) -> None:
    while scheduler.busy:
        scheduler.step()


def alone(model: DistributedMoE, ids: list[int], sampling: Sampling) -> Sequence:
    scheduler = Scheduler(model, prefill_first=True, preempt=True)
    seq = scheduler.new(ids, sampling)
    scheduler.add(seq)
    finish(scheduler)
    return seq


def arrive_at_layer(model: DistributedMoE, layer: int, scheduler: Scheduler, newcomer: Sequence) -> Any:
    """A hook that adds `newcomer` to the scheduler when the next step reaches `layer`'s MoE (an arrival in the
    middle of a step, at a known place), once."""
    remote = next(m for m in model.hf_model.modules() if isinstance(m, RemoteExperts) and m.layer == layer)

    def add(_module: Any, _args: Any) -> None:
        handle.remove()
        scheduler.add(newcomer)

    handle = remote.register_forward_pre_hook(add)
    return handle


def run_with_arrival(model: DistributedMoE, first: tuple[list[int], Sampling], second: tuple[list[int], Sampling],
                     layer: int, records: list[StepRecord], restart: bool = False) -> tuple[Sequence, Sequence, float]:
    """`first` runs; `second` arrives at `layer`'s MoE of first's first decode step. Returns both and that step's
    wall time as the caller saw it."""
    scheduler = Scheduler(model, prefill_first=True, preempt=True)
    scheduler.restart = restart
    a, b = scheduler.new(*first), scheduler.new(*second)
    scheduler.add(a)
    scheduler.step()  # a's prefill
    assert len(a.tokens) == 1
    hook = arrive_at_layer(model, layer, scheduler, b)
    model.telemetry.listeners.append(records.append)
    try:
        start = time.perf_counter()
        scheduler.step()  # a's decode step, paused at `layer` for b's prefill
        elapsed = time.perf_counter() - start
    finally:
        model.telemetry.listeners.remove(records.append)
        hook.remove()
    assert len(a.tokens) == 2 and len(b.tokens) == 1  # b's first token came inside a's step
    finish(scheduler)
    return a, b, elapsed


def assert_same(got: Sequence, ref: Sequence) -> None:
    assert got.tokens == ref.tokens and got.finish_reason == ref.finish_reason
    np.testing.assert_allclose(got.logprobs, ref.logprobs, rtol=0, atol=LOGPROB_TOL)


FIRST = (prompt(7, 0), Sampling(max_tokens=5))
SECOND = (prompt(11, 1), Sampling(max_tokens=4, temperature=0.9, seed=8))


@pytest.mark.parametrize(("layer", "restart"), [(0, False), (1, False), (1, True)])
def test_a_request_arriving_during_a_decode_step_prefills_inside_it(model: DistributedMoE, layer: int,
                                                                   restart: bool) -> None:
    first, second = FIRST, SECOND
    records: list[StepRecord] = []
    a, b, elapsed = run_with_arrival(model, first, second, layer, records, restart)

    assert [r.phase for r in records] == ["prefill", "decode"]  # b's prefill finished first, inside a's step
    prefill, decode = records
    assert prefill.num_tokens == len(second[0]) and decode.num_tokens == 1
    assert [len(r.layers) for r in records] == [2, 2]  # each step's own MoE layers, none lent to the other
    assert decode.wall_s + prefill.wall_s <= elapsed  # the paused step's time does not count the pause
    assert [p.step for p in b.parts][:1] == [prefill] and a.parts[1].step is decode
    assert_same(a, alone(model, *first))
    assert_same(b, alone(model, *second))


def test_a_request_arriving_before_the_first_moe_layer_restarts_the_step_with_it(model: DistributedMoE) -> None:
    records: list[StepRecord] = []
    a, b, _ = run_with_arrival(model, FIRST, SECOND, 0, records, restart=True)

    [step] = records  # one step, mixed: b's prompt and a's decode token; the abandoned start left no record
    assert step.phase == "prefill" and step.num_tokens == 1 + len(SECOND[0]) and len(step.layers) == 2
    assert a.parts[1].step is step and b.parts[0].step is step
    assert_same(a, alone(model, *FIRST))
    assert_same(b, alone(model, *SECOND))


def test_the_paused_step_keeps_its_channel_under_a_latency_aware_policy(model: DistributedMoE) -> None:
    from wdmoe.config import Scenario
    from wdmoe.policy.factory import make_policy

    first = (prompt(6, 2), Sampling(max_tokens=5, seed=42))
    second = (prompt(9, 3), Sampling(max_tokens=3, seed=7))
    model.set_policy(make_policy("wlr", theta=0.3), Scenario.default(model.num_devices))
    try:
        a, b, _ = run_with_arrival(model, first, second, 1, [])
        ref_a, ref_b = alone(model, *first), alone(model, *second)
        summary = Scheduler(model).summary
        per_step = [summary(s)["latency"]["per_step_s"] for s in (a, ref_a, b, ref_b)]
    finally:
        model.set_policy(None)
    # until b joins a's steps (then the policy shares the band between them: their company counts), each is as
    # alone: a's paused step went on in a's channel, b's prefill ran in b's
    assert a.tokens[:2] == ref_a.tokens[:2] and per_step[0][:2] == per_step[1][:2]
    assert b.tokens[:1] == ref_b.tokens[:1] and per_step[2][:1] == per_step[3][:1]
    assert per_step[0][2:] != per_step[1][2:]  # (and a's later steps did have company)
