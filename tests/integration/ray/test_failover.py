"""Device failures mid-generation: an actor or a whole node killed; re-routing, telemetry, rejoin."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.integration.ray.conftest import DIRECT_PORTS, NUM_DEVICES, DeviceCluster, wait_all_live
from wdmoe import DistributedMoE
from wdmoe.backends.direct import parse_ports
from wdmoe.cli.run_cmd import generate_report
from wdmoe.runtime.telemetry import StepRecord

PROMPT = [5, 17, 99, 3, 42, 7]
NEW_TOKENS = 12
CALL_TIMEOUT_S = 2.0


def kill_at_step(model: DistributedMoE, step: int, kill: Any) -> None:
    """Call `kill()` once, when forward step `step` of the next request finishes (mid-generation)."""

    def listener(record: StepRecord) -> None:
        if record.index == step:
            kill()
            model.telemetry.listeners.remove(listener)

    model.telemetry.listeners.append(listener)


def kill_actor(model: DistributedMoE, device: int) -> None:
    """Device `device`'s process dies (SIGKILL: an OOM kill, a crash); returns once it is gone (ray.kill would
    return before, and the device could still answer a step or two on its direct socket)."""
    pid = model.pool.info[device].pid  # type: ignore[attr-defined]
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return
        if state in ("Z", "X"):  # exited (its sockets are closed); the parent has yet to reap it
            return
        time.sleep(0.001)
    raise TimeoutError(f"device {device}'s process {pid} did not die within 10 s of SIGKILL")


def events(report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e for e in report.get("failover", []) if e["kind"] == kind]


def local_tokens(split: Path) -> list[int]:
    model = DistributedMoE.from_pretrained(split)
    tokens = list(generate_report(model, PROMPT, NEW_TOKENS)["tokens"])
    model.close()
    return tokens


def test_killed_actor_with_replicas_moves_to_a_replica_and_changes_no_token(
    replicated_ray: DistributedMoE, replicated_split: Path
) -> None:
    model = replicated_ray
    model.pool.transport = "compiled"  # type: ignore[attr-defined]
    expected = local_tokens(replicated_split)
    kill_at_step(model, 3, lambda: kill_actor(model, 1))
    report = generate_report(model, PROMPT, NEW_TOKENS)
    assert report["tokens"] == expected  # a replica holds the same expert: the output is exact
    (failed,) = events(report, "failed")
    assert failed["device"] == 1
    assert report["rerouted"]["replica"] > 0 and report["rerouted"]["substitute"] == 0
    assert failed["detect_s"] <= CALL_TIMEOUT_S
    wait_all_live(model)


def test_killed_actor_without_replica_substitutes_and_later_steps_avoid_it(
    healthy_mixtral: DistributedMoE, mixtral_split: Path
) -> None:
    model = healthy_mixtral
    model.pool.transport = "direct"  # type: ignore[attr-defined]
    model.pool.rejoin_after_s = 60.0  # type: ignore[attr-defined]  # stays dead for this request
    expected = local_tokens(mixtral_split)
    kill_at_step(model, 4, lambda: kill_actor(model, 2))
    report = generate_report(model, PROMPT, NEW_TOKENS)
    assert len(report["tokens"]) == NEW_TOKENS and all(0 <= t < 128 for t in report["tokens"])
    assert report["tokens"][:4] == expected[:4]  # before the kill: the in-process tokens
    (failed,) = events(report, "failed")
    assert failed["device"] == 2 and failed["detect_s"] <= CALL_TIMEOUT_S
    assert report["rerouted"]["substitute"] > 0 and report["rerouted"]["replica"] == 0
    records = [rec for step in model.steps for rec in step.layers]
    noticed = next(i for i, rec in enumerate(records) if rec.failover)  # ray.kill takes effect a moment later
    after = records[noticed + 1 :]
    assert after and all(rec.assignments[2] == 0 for rec in after)
    later = generate_report(model, PROMPT, 3)  # a later request avoids the dead device from its first step
    assert later["tokens_per_device"][2] == 0 and "failover" not in later
    assert later["rerouted"]["substitute"] > 0


def test_killed_node_is_noticed_within_the_timeout_and_a_restarted_device_rejoins(
    ray_cluster: DeviceCluster, healthy_mixtral: DistributedMoE
) -> None:
    model = healthy_mixtral
    model.pool.transport = "direct"  # type: ignore[attr-defined]
    kill_at_step(model, 2, lambda: ray_cluster.kill_device_node(1))
    try:
        report = generate_report(model, PROMPT, NEW_TOKENS)
        assert len(report["tokens"]) == NEW_TOKENS
        (failed,) = events(report, "failed")
        assert failed["device"] == 1 and failed["detect_s"] <= CALL_TIMEOUT_S + 0.5
        assert generate_report(model, PROMPT, 3)["tokens_per_device"][1] == 0  # no node offers device 1 now

        ray_cluster.start_device_cli(1, ray_cluster.token_file)  # the device restarts
        wait_all_live(model)
        report = generate_report(model, PROMPT, 4)
        assert report["tokens_per_device"][1] > 0  # used again
        assert model.pool.info[1].direct_address[1] in parse_ports(DIRECT_PORTS)  # type: ignore[attr-defined]
        assert model.pool.node_of()[1] != ray_cluster.node_id_of(0)  # type: ignore[attr-defined]
    finally:
        ray_cluster.ensure_device_node(1)  # the later tests need device 1, whatever happened here


@pytest.mark.slow  # each kill costs a new actor process (torch + transformers import): ~5 s of CPU each
def test_twenty_random_kills_over_several_requests_all_complete(replicated_ray: DistributedMoE) -> None:
    model = replicated_ray
    model.pool.transport = "direct"  # type: ignore[attr-defined]  # (a compiled graph recompiles after each kill)
    rng = random.Random(0)
    kills: list[int] = []

    killed_pids: set[int] = set()

    def maybe_kill(record: StepRecord) -> None:
        # a killed device stays in the pool until a step sends it a batch: count by process, not by pool entry
        pool = model.pool
        live = [d for d in sorted(pool.actors) if pool.info[d].pid not in killed_pids]  # type: ignore[attr-defined]
        if len(kills) < 20 and len(live) >= 2 and rng.random() < 0.3:
            kills.append(rng.choice(live))
            killed_pids.add(pool.info[kills[-1]].pid)  # type: ignore[attr-defined]
            kill_actor(model, kills[-1])

    model.telemetry.listeners.append(maybe_kill)
    deadline = time.monotonic() + 420.0  # generous: the rejoins are CPU-bound, and CI machines are shared
    requests = failed = 0
    try:
        while len(kills) < 20 and time.monotonic() < deadline:
            prompt = [rng.randrange(3, 128) for _ in range(4)]
            report = generate_report(model, prompt, 8)
            requests += 1
            failed += len(events(report, "failed"))
            assert len(report["tokens"]) == 8 and all(0 <= t < 128 for t in report["tokens"])
            torch.testing.assert_close(torch.tensor(report["experts_per_token_mean"]), torch.tensor(2.0))
    finally:
        model.telemetry.listeners.remove(maybe_kill)
    assert len(kills) == 20, f"only {len(kills)} kills in {requests} requests"
    assert requests >= 3
    assert failed >= 1
    wait_all_live(model)
    assert sorted(model.pool.actors) == list(range(NUM_DEVICES))  # type: ignore[attr-defined]
