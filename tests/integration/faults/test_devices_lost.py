"""Devices killed mid-request on the in-process pool (`KillablePool`): one, several, the last replica, all of them;
and every device coming back, noticed by the runtime's background check, not by the next request."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from tests.integration.faults.conftest import at_step, killable_model
from tests.integration.faults.pools import KillablePool
from wdmoe.runtime.failover import FailoverEvent
from wdmoe.runtime.liveness import DevicesLost
from wdmoe.runtime.model import DistributedMoE

PROMPT = torch.tensor([[40, 41, 75, 76, 77, 12]])
NEW_TOKENS = 10


def generate(model: DistributedMoE) -> list[int]:
    out = model.generate(PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False)
    return list(out[0, PROMPT.shape[1] :].tolist())


def failover(model: DistributedMoE) -> list[FailoverEvent]:
    return [e for step in model.steps for rec in step.layers for e in rec.failover]


def wait_until(predicate: object, timeout_s: float = 10.0) -> float:
    """Seconds until `predicate()` holds (polled every 10 ms); TimeoutError past `timeout_s`."""
    start = time.monotonic()
    while not predicate():  # type: ignore[operator]
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"not within {timeout_s} s")
        time.sleep(0.01)
    return time.monotonic() - start


@pytest.mark.parametrize("devices", [(1,), (0, 2)], ids=["one", "several"])
def test_devices_killed_mid_request_are_routed_around_and_the_request_completes(
    killable: tuple[DistributedMoE, KillablePool], devices: tuple[int, ...]
) -> None:
    model, pool = killable
    at_step(model, 3, lambda: pool.kill(*devices))
    tokens = generate(model)
    assert len(tokens) == NEW_TOKENS
    assert {e.device for e in failover(model) if e.kind == "failed"} == set(devices)
    assert model.runtime.dead == frozenset(devices)
    rerouted = sum(rec.rerouted[1] + rec.rerouted[2] for step in model.steps for rec in step.layers)
    assert rerouted > 0  # no replica: substitutes (or drops), and the request still answered


def test_losing_the_last_replica_substitutes_and_the_first_loss_changes_no_token(replicated_text_split: Path) -> None:
    reference, _ = killable_model(replicated_text_split)
    expected = generate(reference)
    reference.close()
    model, pool = killable_model(replicated_text_split)
    at_step(model, 2, lambda: pool.kill(1))  # every expert of device 1 has a live replica
    assert generate(model) == expected
    assert sum(rec.rerouted[1] for step in model.steps for rec in step.layers) == 0
    at_step(model, 2, lambda: pool.kill(2))  # experts on (1, 2) lose their last replica
    assert len(generate(model)) == NEW_TOKENS
    assert sum(rec.rerouted[1] for step in model.steps for rec in step.layers) > 0
    model.close()


def test_all_devices_killed_mid_request_fail_it_and_devices_back_are_found_without_a_request(
    killable: tuple[DistributedMoE, KillablePool],
) -> None:
    model, pool = killable
    expected = generate(model)
    seen: list[FailoverEvent] = []
    model.runtime.listeners.append(seen.append)
    at_step(model, 3, lambda: pool.kill(0, 1, 2))
    with pytest.raises(DevicesLost, match="all 3 devices have failed") as lost:
        generate(model)
    assert "killed by the test" in str(lost.value)
    assert model.runtime.dead == frozenset({0, 1, 2})
    assert sorted(e.device for e in seen if e.kind == "failed") == [0, 1, 2]  # each failure heard once
    dispatches = len(pool.dispatched)
    with pytest.raises(DevicesLost):  # while every device is dead a request fails at once: nothing is dispatched
        generate(model)
    assert len(pool.dispatched) == dispatches

    pool.revive(0, 1, 2)
    wait_until(lambda: not model.runtime.dead, timeout_s=5.0)  # the background check, no request meanwhile
    assert len(pool.dispatched) == dispatches
    assert sorted(e.device for e in seen if e.kind == "rejoined") == [0, 1, 2]
    assert generate(model) == expected  # every device back: the model's own output again


def test_the_background_check_stops_once_every_device_is_back(killable: tuple[DistributedMoE, KillablePool]) -> None:
    model, pool = killable
    at_step(model, 1, lambda: pool.kill(2))
    generate(model)
    assert model.runtime.dead == frozenset({2})
    pool.revive(2)
    wait_until(lambda: not model.runtime.dead, timeout_s=5.0)
    time.sleep(0.2)
    calls = pool.rejoin_calls
    time.sleep(0.3)  # six intervals of 0.05 s: a check still running would have asked again
    assert pool.rejoin_calls == calls


def test_a_batched_requests_summary_with_rerouted_rows_equals_its_slices(
    killable: tuple[DistributedMoE, KillablePool],
) -> None:
    from wdmoe.runtime.sampling import Sampling
    from wdmoe.runtime.scheduler import Scheduler
    from wdmoe.runtime.telemetry import request_summary, sliced_summary

    model, pool = killable
    scheduler = Scheduler(model)
    seqs = [scheduler.new([40 + i, 41, 75 + i, 12], Sampling(max_tokens=6 + i)) for i in range(3)]
    for seq in seqs:
        scheduler.add(seq)
    at_step(model, 2, lambda: pool.kill(1))
    while scheduler.busy:
        scheduler.step()
    assert any(rec.routed_index is not None for seq in seqs for p in seq.parts for rec in p.step.layers)
    for seq in seqs:
        fast = request_summary(seq.parts, model.num_devices)
        assert fast == sliced_summary(seq.parts, model.num_devices)
        assert fast["failover"] and sum(fast["rerouted"].values()) > 0
