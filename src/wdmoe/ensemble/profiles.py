"""MoE² profiles (papers.md §5.8 step 1): per-category delay and energy of one request on each expert's server,
modeled (`wdmoe.ensemble.costs`, radio + roofline) and measured (the worker's timed forward passes + the radio).

Contract: `DEPLOYMENT` puts each shipped expert on an edge server (`wdmoe.radio.compute.PRESETS`: Jetson Orins and an
RTX 4090, the paper's hardware classes [V]; which expert sits where is ours [R]); the servers' links are one seeded
realization of `wdmoe.config.Scenario.default` (`sample_links`), each server given an equal share of the band.
`task_categories(scores, tokenizer)` sizes each application category by its prompts: a multiple-choice request
prefills context + choice once per choice and returns one token's worth of scores. `modeled_costs` uses the
roofline compute model with the experts' real parameter counts (fp32); `measured_costs` replaces the modeled compute
by the 95th percentile of the measured compute seconds per category (this machine) and charges it at the server's
compute power: measured time, modeled power [R].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from wdmoe.config import Scenario
from wdmoe.ensemble.costs import Category, LLMExpert, RequestCosts, request_costs
from wdmoe.ensemble.scores import TaskScores
from wdmoe.ensemble.task import CATEGORIES
from wdmoe.radio.channel import sample_links
from wdmoe.radio.compute import PRESETS, DeviceProfile
from wdmoe.radio.latency import energy_parts_j
from wdmoe.radio.link import LinkState

DEPLOYMENT = {  # expert -> the server preset that hosts it [R]
    "tech-s": "jetson-orin-nano",
    "jargon-d": "jetson-orin-nx",
    "lit-moe": "jetson-agx-orin",
    "society-d": "jetson-agx-orin",
    "general-moe": "rtx4090-edge",
}
LINK_SEED = 0
AGGREGATION_S = 20e-6  # seconds to mix k option distributions at the access point [R]
BYTES_PER_PARAM = 4.0  # the experts are stored and served in fp32


@dataclass(frozen=True)
class Deployment:
    experts: tuple[LLMExpert, ...]
    link: LinkState
    bandwidth_hz: float  # each server's share
    bs_tx_power_w: float  # the access point's transmit power, the scenario's


def deployment(expert_names: Sequence[str], num_parameters: Sequence[int], seed: int = LINK_SEED) -> Deployment:
    scenario = Scenario.default(len(expert_names))
    experts = tuple(
        LLMExpert(name, float(params), PRESETS[DEPLOYMENT[name]], BYTES_PER_PARAM)
        for name, params in zip(expert_names, num_parameters, strict=True)
    )
    radio = scenario.radio
    link = sample_links(np.random.default_rng(seed), radio)
    return Deployment(experts, link, radio.bandwidth_hz / len(expert_names), radio.bs_tx_power_w)


def task_categories(prompt_tokens: np.ndarray, categories: np.ndarray) -> list[Category]:
    """One Category per task category; prompt_tokens (I,) = tokens prefilled per request (all choices)."""
    return [Category(name, round(float(prompt_tokens[categories == c].mean())), 1) for c, name in enumerate(CATEGORIES)]


def modeled_costs(dep: Deployment, categories: Sequence[Category]) -> RequestCosts:
    return request_costs(dep.experts, categories, dep.link, dep.bandwidth_hz, bs_tx_power_w=dep.bs_tx_power_w)


def _radio_only(expert: LLMExpert) -> LLMExpert:
    """The same expert on a server that computes in no time and at no power: request_costs then gives the radio."""
    free = DeviceProfile(expert.server.name, 1e30, 1e30, expert.server.memory_bytes, expert.server.tx_power_w, 0.0, 0.0)
    return replace(expert, server=free)


def measured_costs(
    dep: Deployment, categories: Sequence[Category], scores: TaskScores, quantile: float = 0.95
) -> RequestCosts:
    """Radio of `modeled_costs` + the measured compute quantile per (expert, category), at the server's power."""
    radio = request_costs([_radio_only(e) for e in dep.experts], categories, dep.link, dep.bandwidth_hz,
                          bs_tx_power_w=dep.bs_tx_power_w)
    compute = np.array(
        [
            [np.quantile(scores.compute_s[n, scores.categories == c], quantile) for c in range(len(categories))]
            for n in range(len(dep.experts))
        ]
    )  # (N, C)
    power = np.array([e.server.compute_power_w for e in dep.experts])[:, None]  # (N, 1)
    _, compute_j, _ = energy_parts_j(0.0, compute, 0.0, power, 0.0, dep.bs_tx_power_w)  # radio.latency's energy
    return RequestCosts(radio.expert_names, radio.category_names, radio.delay_s + compute, radio.energy_j + compute_j)
