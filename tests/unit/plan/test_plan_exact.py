"""The exact placement solvers (plan/exact.py's MILP, plan/exact_layers.py's layer decomposition) against
brute-force enumeration of every placement and against each other, and the objective they optimize against the
radio model called on the whole layer.

Brute force is the independent reference: it tries all D^(L*E) primaries, keeps those within every device's
memory, and scores each with `LatencyModel.token_s`; the MILP never enumerates placements, it reasons over
per-set device tuples, so agreement checks its formulation (marginal constraints, memory rows, costs); the
decomposition enumerates one layer at a time and joins the layers through their memory patterns, so agreement
checks its keys, its bounds and its pruning.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest

from wdmoe.plan.cost import LatencyModel
from wdmoe.plan.errors import PlanError
from wdmoe.plan.exact import ExactLimits, ExactSolution, program_columns, solve_exact, solve_milp
from wdmoe.plan.exact_layers import solve_by_layers
from wdmoe.plan.instances import small_cluster
from wdmoe.plan.inter import search_primary
from wdmoe.plan.links import RadioSettings
from wdmoe.plan.requirement import ModelRequirement
from wdmoe.plan.status import ResourceStatus
from wdmoe.policy.bandwidth import equal_split
from wdmoe.radio.compute import PRESETS, DeviceProfiles
from wdmoe.radio.latency import LayerLoad, layer_breakdown

PRESET_NAMES = sorted(PRESETS)


def tiny(seed: int) -> tuple[LatencyModel, np.ndarray, list[ResourceStatus]]:
    """A random cluster small enough to enumerate: D^(L*E) <= 4^6; mixed bit widths; tight or loose memory."""
    rng = np.random.default_rng(seed)
    layers, experts = [(1, 4), (2, 3), (1, 5), (2, 2), (3, 2)][seed % 5]
    devices = 2 if layers * experts > 5 else int(rng.integers(2, 5))
    top_k = int(rng.integers(1, min(experts, 3) + 1))
    popularity = rng.dirichlet(np.full(experts, rng.choice([0.3, 1.0])), size=layers) * top_k
    requirement = ModelRequirement.build("tiny", tuple(range(layers)), experts, top_k, int(rng.choice([64, 512])),
                                         32, int(rng.integers(20_000, 400_000)), 1_000, popularity)
    bits = rng.choice([32, 16, 8, 4], size=(layers, experts))
    sizes = requirement.bytes_for(bits)
    owner = rng.integers(devices, size=sizes.size)  # a feasible placement exists: memory around a random one
    capacity = (np.bincount(owner, weights=sizes.ravel(), minlength=devices)
                + rng.choice([0.0, 0.1, 1.0]) * rng.random(devices) * sizes.sum()).astype(np.int64)
    statuses = [
        ResourceStatus(f"d{d}", PRESETS[str(rng.choice(PRESET_NAMES))], int(capacity[d]),
                       link_rate_bps=float(10 ** rng.uniform(6, 9)), load=float(rng.uniform(0, 0.8)))
        for d in range(devices)
    ]
    radio = RadioSettings(bandwidth_hz=float(rng.choice([5e6, 40e6])), bs_layer_time_s=float(rng.uniform(0, 3e-4)))
    return LatencyModel(requirement, statuses, radio, bits), capacity, statuses


def brute_force(model: LatencyModel, capacity: np.ndarray) -> float:
    """The lowest token_s over every placement within memory (inf if none)."""
    sizes = model.expert_bytes
    best = np.inf
    for flat in itertools.product(range(model.num_devices), repeat=sizes.size):
        primary = np.array(flat).reshape(sizes.shape)
        used = np.bincount(primary.ravel(), weights=sizes.ravel(), minlength=model.num_devices)
        if np.all(used <= capacity):
            best = min(best, model.token_s(primary))
    return best


@pytest.mark.parametrize("solver", [solve_milp, solve_exact], ids=["milp", "layers"])
@pytest.mark.parametrize("seed", range(60))
def test_exact_solver_equals_brute_force(seed: int, solver: Callable[..., ExactSolution]) -> None:
    model, capacity, _ = tiny(seed)

    solution = solver(model, capacity)

    assert solution.method == ("milp" if solver is solve_milp else "layers")
    assert solution.optimal and solution.gap == 0.0
    assert solution.latency_s == pytest.approx(brute_force(model, capacity), rel=1e-9)
    used = np.bincount(solution.primary.ravel(), weights=model.expert_bytes.ravel(), minlength=model.num_devices)
    assert np.all(used <= capacity)


def test_objective_equals_the_radio_model_on_the_whole_layer() -> None:
    """token_s caches one-token steps of a virtual layer of the kept experts; the reference calls
    radio.latency.layer_breakdown on the real layer (all E experts, the real expert -> device map) per top-k set."""
    model, _, statuses = tiny(3)
    rng = np.random.default_rng(0)
    primary = rng.integers(model.num_devices, size=model.expert_bytes.shape)
    profiles = DeviceProfiles.from_profiles([s.effective_profile() for s in statuses])
    expected = 0.0
    for pos, routes in enumerate(model.routes):
        for members, p in zip(routes.sets, routes.prob, strict=True):
            index = members[None, :]
            keep = np.ones(index.shape, dtype=bool)
            active = np.zeros(model.num_devices, dtype=bool)
            active[primary[pos][members]] = True
            load = LayerLoad(index, keep, primary[pos], model.requirement.expert_flops_per_token,
                             model.expert_bytes[pos].astype(float), model.bits_per_token)
            band = equal_split(active, model.radio.bandwidth_hz)
            expected += p * np.mean([layer_breakdown(load, link, profiles, band,
                                                     bs_time_s=model.radio.bs_layer_time_s).layer_s
                                     for link in model.links])
    assert model.token_s(primary) == pytest.approx(expected, rel=1e-12)


def test_the_two_exact_solvers_agree_beyond_brute_force() -> None:
    """Clusters of up to 3 layers x 6 experts x 4 devices (plan/instances.py, mixed expert sizes): the same optimum,
    with the heuristic's plan as the decomposition's upper bound or without."""
    for seed in range(40):
        case = small_cluster(seed)
        model, capacity = case.model, case.capacity_bytes

        milp = solve_milp(model, capacity)
        layers = solve_by_layers(model, capacity)
        started = solve_by_layers(model, capacity, start=search_primary(model, capacity))

        assert layers is not None and started is not None and milp.optimal, seed
        assert layers.optimal and started.optimal, seed
        assert layers.latency_s == pytest.approx(milp.latency_s, rel=1e-9), seed
        assert started.latency_s == pytest.approx(milp.latency_s, rel=1e-9), seed


def test_the_decomposition_stopped_at_its_time_limit_certifies_its_gap() -> None:
    """Past the time limit after its first layer, it returns the better of its incumbent and the start (here the
    heuristic's plan, so there is one) with a lower bound under the optimum."""
    seeds = [s for s in range(60) if tiny(s)[0].expert_bytes.shape[0] >= 2]
    for seed in seeds[:10]:
        model, capacity, _ = tiny(seed)
        optimum = brute_force(model, capacity)
        start = search_primary(model, capacity)

        stopped = solve_by_layers(model, capacity, ExactLimits(time_limit_s=0.0), start)

        assert stopped is not None and stopped.latency_s <= model.token_s(start), seed
        assert stopped.lower_bound_s <= optimum * (1 + 1e-12) and stopped.latency_s >= optimum * (1 - 1e-12), seed
        assert stopped.gap == pytest.approx(1 - stopped.lower_bound_s / stopped.latency_s, abs=1e-12), seed
        assert stopped.optimal == (stopped.gap == 0.0), seed


def test_layers_with_too_many_placements_go_to_the_milp() -> None:
    model, capacity, _ = tiny(0)

    solution = solve_exact(model, capacity, ExactLimits(max_assignments=1))

    assert solution.method == "milp" and solution.optimal
    assert solution.latency_s == pytest.approx(brute_force(model, capacity), rel=1e-9)


def test_too_large_a_program_is_refused_with_its_sizes() -> None:
    model, capacity, _ = tiny(0)

    with pytest.raises(PlanError) as caught:  # the decomposition does not apply, the whole MILP is too large
        solve_exact(model, capacity, ExactLimits(max_columns=program_columns(model) - 1, max_assignments=1))

    assert f"{program_columns(model):,} columns" in str(caught.value) and "drop --exact" in str(caught.value)


@pytest.mark.parametrize("solver", [solve_milp, solve_exact], ids=["milp", "layers"])
def test_no_placement_within_memory_is_infeasible(solver: Callable[..., ExactSolution]) -> None:
    model, capacity, _ = tiny(1)

    with pytest.raises(PlanError, match="fits the devices' memory"):
        solver(model, capacity // 4)
