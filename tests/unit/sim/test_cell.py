"""A simulated cell of many users (wdmoe.sim.cell): the live scheduler's batches and telemetry, a hand-computed
queue, and its properties (one user is the single-request replay; TTFT grows with the arrival rate)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from wdmoe.config import FadingConfig, Scenario
from wdmoe.policy.factory import make_policy
from wdmoe.radio.latency import StepLatency, step_totals
from wdmoe.runtime.model import DistributedMoE
from wdmoe.runtime.sampling import Sampling
from wdmoe.runtime.scheduler import Scheduler
from wdmoe.runtime.scheduler import Sequence as Seq
from wdmoe.runtime.telemetry import StepRecord, slice_layer
from wdmoe.sim.cell import CellRequest, closed_loop, poisson_arrivals, radio_step, run_cell, trace_request
from wdmoe.sim.report import request_times
from wdmoe.sim.simulate import make_decider, replay
from wdmoe.sim.synthesize import synthesize_trace
from wdmoe.sim.trace import Trace, record_trace

REL = 1e-9
# 3 seeded requests: prompt length, sampling, the live step before which each arrives
REQUESTS: list[tuple[int, Sampling, int]] = [
    (5, Sampling(max_tokens=5, seed=11), 0),
    (3, Sampling(max_tokens=4, temperature=0.9, seed=12), 1),
    (7, Sampling(max_tokens=3, seed=13), 2),
]


def live(model: DistributedMoE, max_batch: int) -> tuple[list[Seq], list[StepRecord]]:
    """The live scheduler in-process, each request added before the step numbered by its arrival."""
    records: list[StepRecord] = []
    model.telemetry.listeners.append(records.append)
    scheduler = Scheduler(model, max_batch=max_batch)
    seqs = [scheduler.new([(7 * i + 3 * n) % 100 + 1 for i in range(n)], s) for n, s, _ in REQUESTS]
    step = 0
    try:
        while step <= REQUESTS[-1][2] or scheduler.busy:
            for seq, (_, _, at) in zip(seqs, REQUESTS, strict=True):
                if at == step:
                    scheduler.add(seq)
            scheduler.step()
            step += 1
    finally:
        model.telemetry.listeners.remove(records.append)
    assert len(records) == step  # a forward step at every loop step: step numbers are record numbers
    return seqs, records


def per_request_trace(model: DistributedMoE, seqs: list[Seq]) -> Trace:
    """Each request's own rows of the live batched steps, request after request: the trace the cell replays."""
    steps = [StepRecord(p.step.index, "prefill" if p.first else "decode", p.stop - p.start,
                        [slice_layer(r, p.start, p.stop) for r in p.step.layers]) for s in seqs for p in s.parts]
    return record_trace(steps, model.model_costs(), model.runtime.primary, model.num_devices)


@pytest.mark.parametrize("max_batch", [64, 2])
@pytest.mark.parametrize("policy", ["topk", "wlr", "joint"])
def test_the_cell_gives_each_request_the_live_runtimes_modeled_ttft_and_tpot(mixtral_split: Path, policy: str,
                                                                            max_batch: int) -> None:
    scenario = Scenario.default(num_devices=3).model_copy(update={"seed": 5})
    model = DistributedMoE.from_pretrained(mixtral_split, policy=make_policy(policy, theta=0.5), scenario=scenario)
    try:
        seqs, records = live(model, max_batch)
        summaries = [Scheduler(model).summary(s) for s in seqs]
        trace = per_request_trace(model, seqs)
    finally:
        model.close()
    clock, starts = 0.0, []  # the live run's modeled clock at the start of each step
    for rec in records:
        starts.append(clock)
        clock += step_totals([r.modeled for r in rec.layers]).latency_s
    requests = [trace_request(trace, i, i, starts[at], seq.channel_seed)
                for i, (seq, (_, _, at)) in enumerate(zip(seqs, REQUESTS, strict=True))]

    run = run_cell(requests, radio_step(trace, make_decider(trace, scenario, make_policy(policy, theta=0.5))),
                   max_batch)

    assert run.steps == len(records)
    assert run.batch_sizes.tolist() == [sum(p.step is r for s in seqs for p in s.parts) for r in records]
    for seq, got, summary, (_, _, at) in zip(seqs, run.requests, summaries, REQUESTS, strict=True):
        want = summary["latency"]
        admitted = next(i for i, r in enumerate(records) if r is seq.parts[0].step)
        assert got.prefill_s == pytest.approx(want["ttft_s"], rel=REL)
        assert got.tpot_s == pytest.approx(want["tpot_s"], rel=REL)
        assert got.queue_s == pytest.approx(starts[admitted] - starts[at], rel=REL, abs=1e-15)
        assert got.ttft_s == pytest.approx(got.queue_s + want["ttft_s"], rel=REL)
        assert got.energy_j == pytest.approx(summary["energy_j"], rel=REL)
        assert got.bytes_on_air == pytest.approx(summary["bytes_on_air"], rel=REL)
        assert got.tokens == len(seq.tokens)
    if max_batch == 2:
        assert run.requests[2].queue_s > 0  # the third request really waited for room


def fixed_trace(prompt_len: int = 4, new_tokens: int = 3, requests: int = 3) -> Trace:
    return synthesize_trace(np.random.default_rng(0), 2, 4, 2, requests, prompt_len, new_tokens, num_devices=2)


def half_second_per_request(batch: Sequence[CellRequest]) -> StepLatency:
    """A step takes 0.5 s per request in it, 1 J per token."""
    tokens = float(sum(int(r.step_tokens[r.produced]) for r in batch))
    return StepLatency(0.5 * len(batch), tokens, 0.0, tokens, 0.0, 8.0 * tokens, 0.0, 2)


def test_a_hand_computed_queue() -> None:
    trace = fixed_trace()  # 3 tokens each: a prefill step of 4 tokens, then 2 decode steps
    arrivals = [0.0, 0.5, 10.0]
    requests = [trace_request(trace, i, i, at, 0) for i, at in enumerate(arrivals)]

    run = run_cell(requests, half_second_per_request, max_batch=2)

    # r0 alone [0, .5]; r1 (arrived at .5) joins: [.5, 1.5] r0 tok 2 + r1 tok 1, [1.5, 2.5] r0 done + r1 tok 2;
    # r1 alone [2.5, 3]; idle until 10; r2 alone [10, 10.5, 11, 11.5]
    r0, r1, r2 = run.requests
    assert (r0.ttft_s, r0.tpot_s, r0.e2e_s, r0.queue_s) == (0.5, 1.0, 2.5, 0.0)
    assert (r1.ttft_s, r1.tpot_s, r1.e2e_s, r1.queue_s) == (1.0, 0.75, 2.5, 0.0)
    assert (r2.ttft_s, r2.tpot_s, r2.e2e_s) == (0.5, 0.5, 1.5)
    assert run.makespan_s == 11.5 and run.batch_sizes.tolist() == [1, 2, 2, 1, 1, 1, 1]
    # energy in proportion to tokens: r0's prefill step alone (4 J), then half of (1 + 4) and half of (1 + 1)
    assert r0.energy_j == 4.0 + 1.0 + 1.0 and r0.bytes_on_air == (4 * 8 + 8 + 8) / 8


def test_a_full_batch_queues_in_arrival_order() -> None:
    trace = fixed_trace()
    requests = [trace_request(trace, i, i, at, 0) for i, at in enumerate([0.0, 0.5, 0.7])]

    run = run_cell(requests, half_second_per_request, max_batch=1)

    # one at a time, 0.5 s per step, 3 steps each: done at 1.5, 3.0, 4.5
    assert [r.e2e_s for r in run.requests] == pytest.approx([1.5, 2.5, 3.8], rel=REL)
    assert [r.queue_s for r in run.requests] == pytest.approx([0.0, 1.0, 2.3], rel=REL)
    assert [r.ttft_s for r in run.requests] == pytest.approx([0.5, 1.5, 2.8], rel=REL)


def no_fading(devices: int) -> Scenario:
    return Scenario.default(num_devices=devices).model_copy(update={"fading": FadingConfig(model="none")})


@pytest.mark.parametrize("policy", ["topk", "wlr", "joint"])
def test_one_user_in_a_closed_loop_is_the_single_request_replay(policy: str) -> None:
    # without fading the channel is the geometry alone, whichever rule draws the fading blocks
    trace = synthesize_trace(np.random.default_rng(3), 3, 8, 2, 4, 6, 5, num_devices=4, with_logits=True)
    scenario = no_fading(4)
    requests, follow_up = closed_loop(np.random.default_rng(1), trace, users=1, per_user=trace.num_requests)

    run = run_cell(requests, radio_step(trace, make_decider(trace, scenario, make_policy(policy))), 8, follow_up)

    ttft, tpot, _ = request_times(trace, replay(trace, scenario, make_policy(policy)))
    np.testing.assert_allclose([r.ttft_s for r in run.requests], ttft, rtol=REL)
    np.testing.assert_allclose([r.prefill_s for r in run.requests], ttft, rtol=REL)
    np.testing.assert_allclose([r.tpot_s for r in run.requests], tpot, rtol=REL)
    assert [r.request for r in run.requests] == list(range(trace.num_requests))
    assert run.batch_sizes.max() == 1


def test_ttft_grows_with_the_arrival_rate() -> None:
    trace = synthesize_trace(np.random.default_rng(4), 4, 8, 2, 16, 16, 8, num_devices=4)
    scenario = Scenario.default(num_devices=4)
    means = []
    for rate in (0.05, 0.5, 5.0, 50.0):
        requests = poisson_arrivals(np.random.default_rng(7), trace, users=8, rate_per_s=rate, per_user=4)
        run = run_cell(requests, radio_step(trace, make_decider(trace, scenario, make_policy("topk"))), 4)
        means.append(float(np.mean([r.ttft_s for r in run.requests])))
        assert len(run.requests) == 32 and run.batch_sizes.max() <= 4
    assert means == sorted(means) and means[-1] > 2 * means[0], means


def test_poisson_arrivals_are_seeded_and_spread_at_the_rate() -> None:
    trace = fixed_trace()
    a = poisson_arrivals(np.random.default_rng(2), trace, users=4, rate_per_s=10.0, per_user=250)
    b = poisson_arrivals(np.random.default_rng(2), trace, users=4, rate_per_s=10.0, per_user=250)
    assert [r.arrival_s for r in a] == [r.arrival_s for r in b]
    last = [r.arrival_s for r in a if r.user == 0][-1]
    assert last == pytest.approx(25.0, rel=0.2)  # 250 requests at 10/s
    assert {r.request for r in a} == {0, 1, 2}
