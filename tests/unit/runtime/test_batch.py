"""Continuous batching: a request batched with others gets what it gets alone (TopK, fp32), and the telemetry of
shared steps is attributed to requests without losing or inventing anything."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch

from wdmoe.runtime.batch import KVArena, SequenceCache
from wdmoe.runtime.model import DistributedMoE
from wdmoe.runtime.sampling import Sampling
from wdmoe.runtime.scheduler import Scheduler, Sequence
from wdmoe.runtime.telemetry import StepRecord, request_summary, sliced_summary
from wdmoe.serve.engine import Engine, Generation

# fp32 projections over more rows may round differently (wdmoe.runtime.batch): tokens equal, log p within this
LOGPROB_TOL = 1e-4

# 8 requests: prompt length, sampling, the step at which each arrives
REQUESTS: list[tuple[int, Sampling, int]] = [
    (5, Sampling(max_tokens=6), 0),
    (1, Sampling(max_tokens=9, temperature=0.8, seed=11), 0),
    (12, Sampling(max_tokens=4, temperature=1.3, top_p=0.7, seed=5), 1),
    (3, Sampling(max_tokens=7, frequency_penalty=1.5, presence_penalty=0.5), 2),
    (8, Sampling(max_tokens=5, temperature=1.0, seed=99, logit_bias=((3, 5.0), (7, -100.0))), 2),
    (20, Sampling(max_tokens=3), 4),
    (2, Sampling(max_tokens=8, temperature=0.5, top_p=0.9, seed=1, frequency_penalty=0.7), 5),
    (6, Sampling(max_tokens=1, temperature=2.0, seed=3), 7),
]


def prompt(length: int, salt: int) -> list[int]:
    return [(7 * i + 13 * salt + 1) % 120 for i in range(length)]


def run(model: DistributedMoE, arrivals: list[tuple[list[int], Sampling, int]], prefill_first: bool = False,
        on_token: list[Callable[[int], None] | None] | None = None) -> list[Sequence]:
    """Run sequences through one scheduler, each added before the step numbered by its arrival."""
    scheduler = Scheduler(model, max_batch=64, prefill_first=prefill_first)
    callbacks = on_token or [None] * len(arrivals)
    seqs = [scheduler.new(ids, sampling, on_token=cb) for (ids, sampling, _), cb in zip(arrivals, callbacks,
                                                                                         strict=True)]
    step, last = 0, max(at for _, _, at in arrivals)
    while step <= last or scheduler.busy:
        for seq, (_, _, at) in zip(seqs, arrivals, strict=True):
            if at == step:
                scheduler.add(seq)
        scheduler.step()
        step += 1
    return seqs


def assert_same(batched: Sequence, alone: Sequence) -> None:
    assert batched.tokens == alone.tokens
    assert batched.finish_reason == alone.finish_reason
    np.testing.assert_allclose(batched.logprobs, alone.logprobs, rtol=0, atol=LOGPROB_TOL)


def test_eight_requests_arriving_at_different_steps_get_what_they_get_alone(model: DistributedMoE) -> None:
    arrivals = [(prompt(n, i), s, at) for i, (n, s, at) in enumerate(REQUESTS)]
    batched = run(model, arrivals)
    assert max(len(s.parts[-1].step.layers[0].topk_index) for s in batched) > 8  # some steps really were shared
    for seq, (ids, sampling, _) in zip(batched, arrivals, strict=True):
        [alone] = run(model, [(ids, sampling, 0)])
        assert_same(seq, alone)
        assert len(seq.tokens) == sampling.max_tokens  # the tiny model has no EOS


def test_prefill_first_runs_new_prompts_in_steps_of_their_own_and_changes_no_token(model: DistributedMoE) -> None:
    arrivals = [(prompt(n, i), s, at) for i, (n, s, at) in enumerate(REQUESTS)]
    records: list[StepRecord] = []
    model.telemetry.listeners.append(records.append)
    try:
        batched = run(model, arrivals, prefill_first=True)
    finally:
        model.telemetry.listeners.remove(records.append)
    kinds = [{p.first for s in batched for p in s.parts if p.step is r} for r in records]
    assert all(len(k) == 1 for k in kinds)  # no step mixes a prefill with a decode
    assert kinds.count({True}) == len({at for _, _, at in REQUESTS})  # one prefill step per arrival step
    assert max(len(s.parts[-1].step.layers[0].topk_index) for s in batched) > 1  # decodes still shared steps
    mixed = run(model, arrivals)
    for a, b in zip(batched, mixed, strict=True):
        assert_same(a, b)


def test_a_request_that_fails_its_step_fails_alone(model: DistributedMoE) -> None:
    good = [(prompt(5, 0), Sampling(max_tokens=4), 0), (prompt(3, 1), Sampling(max_tokens=3, seed=2,
                                                                               temperature=1.0), 0)]
    bad = ([10**6], Sampling(max_tokens=2), 0)  # outside the vocabulary: the embedding raises in the shared step
    first, failed, second = run(model, [good[0], bad, good[1]])

    assert failed.finish_reason == "error" and isinstance(failed.error, IndexError) and failed.tokens == []
    for seq, ask in ((first, good[0]), (second, good[1])):
        assert_same(seq, run(model, [ask])[0])


def test_a_failing_token_callback_ends_only_its_request(model: DistributedMoE) -> None:
    def broken(token: int) -> None:
        raise RuntimeError(f"callback broke at token {token}")

    asks = [(prompt(4, i), Sampling(max_tokens=5), 0) for i in range(3)]
    ok, failed, other = run(model, asks, on_token=[None, broken, None])

    assert failed.finish_reason == "error" and "callback broke" in str(failed.error) and len(failed.tokens) == 1
    assert_same(ok, run(model, [asks[0]])[0])
    assert_same(other, run(model, [asks[2]])[0])


def test_retired_sequences_give_their_kv_slots_back_while_still_referenced(model: DistributedMoE) -> None:
    arrivals = [(prompt(n, i), s, at) for i, (n, s, at) in enumerate(REQUESTS)]
    seqs = run(model, arrivals)  # every sequence stays referenced here
    arena = model.kv_arena
    assert arena.slots >= 1 and all(seq.cache.arena is None for seq in seqs)
    assert sorted(arena.free) == list(range(arena.slots))  # every slot free again, none lost or given twice
    slots = arena.slots
    again = run(model, arrivals)
    assert arena.slots == slots and sorted(arena.free) == list(range(slots))  # the same slots reused
    for a, b in zip(seqs, again, strict=True):
        assert_same(a, b)  # a reused (zeroed) slot changes nothing


def test_kv_arena_slots_come_back_across_growth() -> None:
    arena = KVArena()
    caches = [SequenceCache() for _ in range(20)]
    for cache in caches:
        cache.bind(arena)
    assert arena.slots == 32 and sorted(c.slot for c in caches) == list(range(20))  # grown 8 -> 16 -> 32
    for cache in caches[:10]:
        cache.release()  # retired
    del caches[10:]  # dropped
    gc.collect()
    assert sorted(arena.free) == list(range(32))


def test_the_order_of_arrival_does_not_matter(model: DistributedMoE) -> None:
    arrivals = [(prompt(n, i), s, at) for i, (n, s, at) in enumerate(REQUESTS)]
    forward = run(model, arrivals)
    backward = run(model, [(ids, s, 7 - at) for ids, s, at in reversed(arrivals)])
    for a, b in zip(forward, reversed(backward), strict=True):
        assert_same(a, b)


def test_greedy_alone_equals_transformers_generate(model: DistributedMoE) -> None:
    ids = prompt(9, 4)
    [seq] = run(model, [(ids, Sampling(max_tokens=6), 0)])
    out = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, output_logits=True,
                         return_dict_in_generate=True)
    assert seq.tokens == out.sequences[0, len(ids):].tolist()
    expected = [float(torch.log_softmax(step[0].float(), -1)[t]) for step, t in zip(out.logits, seq.tokens,
                                                                                    strict=True)]
    np.testing.assert_allclose(seq.logprobs, expected, rtol=0, atol=LOGPROB_TOL)


def test_logit_bias_and_penalties_act() -> None:
    from wdmoe.runtime.sampling import TokenPicker

    logits = torch.tensor([3.0, 2.0, 1.0, 0.0])
    assert TokenPicker(Sampling(1, logit_bias=((3, 10.0),)), 4).pick(logits)[0] == 3
    picker = TokenPicker(Sampling(4, frequency_penalty=1.5), 4)
    assert [picker.pick(logits)[0] for _ in range(3)] == [0, 1, 0]  # 3 - 1.5 < 2, then 3 - 1.5 > 2 - 1.5
    picker = TokenPicker(Sampling(4, presence_penalty=5.0), 4)
    assert [picker.pick(logits)[0] for _ in range(4)] == [0, 1, 2, 3]


def test_batch_greedy_picks_what_each_picker_picks_alone() -> None:
    from wdmoe.runtime.sampling import TokenPicker, batch_greedy

    gen = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 4, (12, 16), generator=gen).float()  # small integers: ties, first maximum wins
    kinds = [Sampling(3), Sampling(3, logit_bias=((5, 1.0), (9, 2.0))), Sampling(3, logit_bias=((2, -3.0),)),
             Sampling(3, temperature=0.7, seed=1), Sampling(3, frequency_penalty=0.5), Sampling(3, temperature=1e-9)]
    pickers = [TokenPicker(kinds[i % len(kinds)], 16) for i in range(12)]
    tokens = batch_greedy(pickers, logits)
    for row, (picker, token) in enumerate(zip(pickers, tokens, strict=True)):
        if picker.stateless_greedy:
            assert token == picker.pick(logits[row])[0]
        else:
            assert token is None
    assert sum(t is not None for t in tokens) == 8 and torch.equal(logits, torch.randint(0, 4, (12, 16),
                                                                   generator=torch.Generator().manual_seed(0)).float())


def test_shared_steps_are_attributed_in_full(model: DistributedMoE) -> None:
    records: list[StepRecord] = []
    model.telemetry.listeners.append(records.append)
    try:
        seqs = run(model, [(prompt(n, i), s, at) for i, (n, s, at) in enumerate(REQUESTS[:4])])
    finally:
        model.telemetry.listeners.remove(records.append)
    summaries = [Scheduler(model).summary(seq) for seq in seqs]
    for key, field in (("bits_up_per_device", "bits_up"), ("bits_down_per_device", "bits_down"),
                       ("tokens_per_device", "tokens_down")):
        attributed = np.sum([s[key] for s in summaries], axis=0)
        recorded = np.sum([getattr(r, field) for step in records for r in step.layers], axis=0)
        np.testing.assert_array_equal(attributed, recorded, err_msg=key)


@pytest.mark.parametrize("policy", [None, "wlr"])
def test_request_summary_equals_summarize_of_its_slices(model: DistributedMoE, policy: str | None) -> None:
    from wdmoe.config import Scenario
    from wdmoe.policy.factory import make_policy

    if policy is not None:
        model.set_policy(make_policy(policy, theta=0.3), Scenario.default(model.num_devices))
    try:
        seqs = run(model, [(prompt(n, i), s, at) for i, (n, s, at) in enumerate(REQUESTS)])
    finally:
        model.set_policy(None)
    for seq in seqs:
        fast, reference = request_summary(seq.parts, model.num_devices), sliced_summary(seq.parts, model.num_devices)
        assert fast == reference
        assert ("latency" in fast) == (policy is not None) and sum(fast["tokens_per_device"]) > 0


def test_engine_serves_concurrent_clients_as_alone(model: DistributedMoE) -> None:
    engine = Engine(model, max_queue=64, max_batch=64)
    try:
        arrivals = [(prompt(n, i), s) for i, (n, s, _) in enumerate(REQUESTS)]
        alone = [engine.start(ids, s).future.result() for ids, s in arrivals]
        results: list[Generation | None] = [None] * len(arrivals)

        def client(i: int) -> None:
            time.sleep(0.01 * (i % 3))
            results[i] = engine.generate(*arrivals[i])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(arrivals))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for got, ref in zip(results, alone, strict=True):
            assert got is not None and got.tokens == ref.tokens
            np.testing.assert_allclose(got.logprobs, ref.logprobs, rtol=0, atol=LOGPROB_TOL)
    finally:
        engine.close()


def test_cancel_retires_a_request_at_the_next_step(model: DistributedMoE) -> None:
    engine = Engine(model)
    try:
        seen = threading.Event()
        handle = engine.start(prompt(4, 0), Sampling(max_tokens=500), on_token=lambda _: seen.set())
        assert seen.wait(30)
        handle.cancel()
        gen = handle.future.result(timeout=30)
        assert gen.finish_reason == "cancelled" and 0 < len(gen.tokens) < 500
        assert engine.pending == 0
    finally:
        engine.close()


def test_a_seeded_request_is_reproducible_under_a_latency_aware_policy(model: DistributedMoE) -> None:
    from wdmoe.config import Scenario
    from wdmoe.policy.factory import make_policy

    model.set_policy(make_policy("wlr", theta=0.3), Scenario.default(model.num_devices))
    try:
        ask = (prompt(6, 1), Sampling(max_tokens=6, seed=42), 0)
        [first] = run(model, [ask])
        run(model, [(prompt(9, 2), Sampling(max_tokens=5, seed=7), 0)])  # moves any shared channel state on
        [again] = run(model, [ask])
        [other] = run(model, [(ask[0], Sampling(max_tokens=6, seed=43), 0)])
    finally:
        model.set_policy(None)
    assert again.tokens == first.tokens
    steps = [Scheduler(model).summary(s)["latency"]["per_step_s"] for s in (first, again, other)]
    assert steps[1] == steps[0]  # the same channel realization, step by step
    assert steps[2] != steps[0]  # another seed, another realization


def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(model: DistributedMoE) -> None:
    engine = Engine(model)
    try:
        blocker = threading.Event()
        engine.submit(blocker.wait, 60)  # holds the worker, so the next three start in one step
        good = [engine.start(prompt(5, i), Sampling(max_tokens=3)) for i in range(2)]
        bad = engine.start([10**6], Sampling(max_tokens=2))  # outside the vocabulary: the embedding raises
        blocker.set()
        with pytest.raises(IndexError):
            bad.future.result(timeout=60)
        assert [len(h.future.result(timeout=60).tokens) for h in good] == [3, 3]
        gen = engine.generate(prompt(5, 0), Sampling(max_tokens=3))
        assert len(gen.tokens) == 3 and engine.pending == 0
    finally:
        engine.close()
