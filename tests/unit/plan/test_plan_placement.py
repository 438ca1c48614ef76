"""The planner: memory limits over random clusters, better than round-robin on lab.toml, sizes when infeasible."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wdmoe.plan.cluster import load_cluster
from wdmoe.plan.cost import LatencyModel, route_distribution
from wdmoe.plan.deployment import PlanKind, round_robin_copies
from wdmoe.plan.errors import PlanError
from wdmoe.plan.inter import SearchConfig
from wdmoe.plan.intra import Tier, place_intra, streamed_bytes
from wdmoe.plan.links import RadioSettings, channel_samples
from wdmoe.plan.planner import PlannerConfig, check_fits, copies_latency_s, plan_deployment
from wdmoe.plan.requirement import ModelRequirement
from wdmoe.plan.status import ResourceStatus
from wdmoe.radio.compute import PRESETS
from wdmoe.radio.rate import shannon_rate_bps, snr_per_hz_for_rate

CLUSTERS = Path(__file__).resolve().parents[3] / "configs" / "clusters"
EXPERT_PARAMS = 3 * 192 * 224  # the shipped model's expert: 516,096 bytes at fp32


def shipped_like(popularity: np.ndarray | None = None) -> ModelRequirement:
    """The shipped model's shapes (4 MoE layers x 8 experts, top-2, fp32), without loading it."""
    return ModelRequirement.build("shipped-like", (0, 1, 2, 3), 8, 2, 192, 32, EXPERT_PARAMS, 1_973_952, popularity)


def skewed_popularity(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.full(8, 0.7), size=4) * 2


def test_planner_beats_round_robin_on_lab_cluster() -> None:
    cluster = load_cluster(CLUSTERS / "lab.toml")
    requirement = shipped_like(skewed_popularity())

    plan = plan_deployment(requirement, cluster.statuses, cluster.radio)
    robin = copies_latency_s(
        round_robin_copies(4, 8, len(cluster.statuses)), requirement, cluster.statuses, cluster.radio
    )

    assert plan.kind is PlanKind.INTER
    assert plan.round_robin_latency_s == pytest.approx(robin)
    assert plan.expected_latency_s < 0.95 * robin
    assert copies_latency_s(plan.copies, requirement, cluster.statuses, cluster.radio) == pytest.approx(
        plan.expected_latency_s
    )


def test_lab_model_needs_several_devices() -> None:
    cluster = load_cluster(CLUSTERS / "lab.toml")
    requirement = shipped_like()
    total = int(requirement.bytes_for().sum())

    assert all(s.free_memory_bytes < total for s in cluster.statuses)
    plan = plan_deployment(requirement, cluster.statuses, cluster.radio)
    assert len({ids[0] for row in plan.copies for ids in row}) >= 3


def test_infeasible_cluster_names_both_sizes() -> None:
    cluster = load_cluster(CLUSTERS / "too-small.toml")

    with pytest.raises(PlanError) as caught:
        plan_deployment(shipped_like(), cluster.statuses, cluster.radio)

    assert "16,515,072 bytes" in str(caught.value)  # needed: 32 x 516,096
    assert "4,000,000 bytes" in str(caught.value)  # offered: 2 x 2,000,000


def test_four_bit_experts_fit_where_fp32_does_not() -> None:
    cluster = load_cluster(CLUSTERS / "too-small.toml")
    requirement = shipped_like()

    with pytest.raises(PlanError):
        check_fits(requirement, cluster.statuses)
    plan = plan_deployment(requirement, cluster.statuses, cluster.radio, bits=np.full((4, 8), 4))
    assert np.all(plan.memory_used_bytes() <= 2_000_000)
    assert int(plan.expert_bytes.sum()) == 32 * EXPERT_PARAMS // 2


def test_intra_server_plan_when_one_server_holds_the_model() -> None:
    requirement = shipped_like(skewed_popularity())
    big = ResourceStatus(
        "edge",
        PRESETS["rtx4090-edge"],
        12_000_000,
        link_rate_bps=1e9,
        host_memory_bytes=20_000_000,
        host_bytes_per_s=25e9,
    )
    small = ResourceStatus("nano", PRESETS["jetson-orin-nano"], 2_000_000, link_rate_bps=1e8)

    plan = plan_deployment(requirement, [small, big], RadioSettings())

    assert plan.kind is PlanKind.INTRA and plan.server == 1
    fast, slow = plan.tiers
    assert fast.used_bytes <= 12_000_000 and slow.used_bytes <= 20_000_000
    assert len(fast.experts) + len(slow.experts) == 32 and slow.experts  # the backbone leaves room for few
    hot = min(requirement.popularity[p] for p in fast.experts)
    assert all(requirement.popularity[p] <= hot for p in slow.experts)  # hot experts on the accelerator
    assert plan.to_placement().experts_on(1) and not plan.to_placement().experts_on(0)


def test_rate_link_inverts_the_radio_rate() -> None:
    snr = snr_per_hz_for_rate(60e6, 40e6)
    assert float(shannon_rate_bps(40e6, snr)) == pytest.approx(60e6, rel=1e-12)
    cluster = load_cluster(CLUSTERS / "lab.toml")
    links = channel_samples(cluster.statuses, cluster.radio)
    assert len(links) == 16 and links[0].snr_dl_per_hz[-1] == pytest.approx(snr)
    assert np.std([link.snr_dl_per_hz[0] for link in links]) > 0  # distance devices are sampled


def test_route_distribution_is_exact_plackett_luce() -> None:
    routes = route_distribution(np.array([2.0, 1.0, 1.0]), 2, np.random.default_rng(0))
    prob = dict(zip(map(tuple, routes.sets.tolist()), routes.prob.tolist(), strict=True))
    # P({0,1}) = .5 * .25/.5 + .25 * .5/.75
    assert prob[(0, 1)] == pytest.approx(0.5 * 0.5 + 0.25 * 0.5 / 0.75)
    assert routes.prob.sum() == pytest.approx(1.0)


devices = st.tuples(
    st.sampled_from(sorted(PRESETS)),
    st.integers(0, 6_000_000),  # free bytes: 0 .. 11 fp32 experts
    st.floats(1e6, 1e9),  # link rate, bit/s
    st.floats(0.0, 0.9),  # load
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(devices, min_size=1, max_size=6), st.integers(0, 2**16), st.sampled_from([32, 16, 8, 4]), st.integers(1, 3)
)
def test_placement_never_exceeds_a_memory_limit(
    spec: list[tuple[str, int, float, float]], seed: int, bits: int, max_copies: int
) -> None:
    statuses = [
        ResourceStatus(f"d{k}", PRESETS[p], free, link_rate_bps=rate, load=load)
        for k, (p, free, rate, load) in enumerate(spec)
    ]
    requirement = shipped_like(np.random.default_rng(seed).dirichlet(np.ones(8), size=4) * 2)
    widths = np.random.default_rng(seed).choice([bits, 4], size=(4, 8))
    config = PlannerConfig(search=SearchConfig(max_copies=max_copies, max_steps=20, restarts=1), allow_intra=False)
    try:
        plan = plan_deployment(requirement, statuses, RadioSettings(seed=seed), widths, config)
    except PlanError as exc:
        assert "bytes" in str(exc)
        assert int(requirement.bytes_for(widths).sum()) > sum(s.free_memory_bytes for s in statuses) or "pack" in str(
            exc
        )
        return
    sizes = requirement.bytes_for(widths)
    used = np.zeros(len(statuses), dtype=np.int64)
    for pos, row in enumerate(plan.copies):
        for e, ids in enumerate(row):
            assert 1 <= len(ids) <= max_copies and len(set(ids)) == len(ids)
            for d in ids:
                used[d] += sizes[pos, e]
    assert np.all(used <= [s.free_memory_bytes for s in statuses])
    assert np.isfinite(plan.expected_latency_s) and plan.expected_latency_s > 0


def test_latency_model_caches_radio_calls() -> None:
    cluster = load_cluster(CLUSTERS / "lab.toml")
    model = LatencyModel(shipped_like(), cluster.statuses, cluster.radio)
    primary = np.array(round_robin_copies(4, 8, 7))[..., 0]

    first = model.token_s(primary)
    calls = model.radio_calls
    assert model.token_s(primary) == first and model.radio_calls == calls


def test_intra_and_inter_plans_are_chosen_by_one_objective() -> None:
    """An AGX Orin holds the whole model (backbone and an eighth of the experts in its memory, the rest in host memory).
    Over a slow link to it the inter-server plan on three nearby NX is faster under the runtime's objective (the
    link to the server is crossed every layer); over a fast link the intra-server plan is. Every candidate and
    round-robin are scored by the same LatencyModel."""
    requirement = shipped_like(skewed_popularity())
    sizes = requirement.bytes_for()
    free = requirement.non_expert_bytes + int(sizes.sum()) // 8
    chosen = {}
    for agx_rate, nx_rate in ((2e7, 4e8), (4e9, 1e6)):
        agx = ResourceStatus("agx", PRESETS["jetson-agx-orin"], free, link_rate_bps=agx_rate,
                             host_memory_bytes=20_000_000, host_bytes_per_s=100e9)
        nx = [ResourceStatus(f"nx{k}", PRESETS["jetson-orin-nx"], 3_000_000, link_rate_bps=nx_rate) for k in range(3)]
        statuses = [agx, *nx]

        plan = plan_deployment(requirement, statuses, RadioSettings())

        latency = {c.label: c.latency_s for c in plan.candidates}
        assert set(latency) == {"inter-server", "intra-server on agx"}
        assert plan.expected_latency_s == min(latency.values())
        model = LatencyModel(requirement, statuses, RadioSettings())
        host = next(t for t in plan_intra_tiers(model, statuses) if t.name == "host").experts
        assert host  # most experts stream from host memory at 100 GB/s: the roofline sees more bytes
        streamed = streamed_bytes(sizes, host, agx)
        all_on_agx = np.zeros((4, 8), dtype=np.int64)
        assert latency["intra-server on agx"] == pytest.approx(model.token_s(all_on_agx, streamed), rel=1e-12)
        assert latency["intra-server on agx"] > model.token_s(all_on_agx)  # the host tier costs time
        assert plan.round_robin_latency_s == pytest.approx(
            copies_latency_s(round_robin_copies(4, 8, 4), requirement, statuses, RadioSettings()), rel=1e-12
        )
        chosen[agx_rate] = plan.kind
    assert chosen == {2e7: PlanKind.INTER, 4e9: PlanKind.INTRA}


def plan_intra_tiers(model: LatencyModel, statuses: list[ResourceStatus]) -> tuple[Tier, ...]:
    placed = place_intra(model, statuses)
    assert placed is not None
    return placed.tiers
