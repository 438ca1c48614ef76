"""The policies the experiments compare, each under a unique label (legend, CSV row, cache key).

Contract: `PolicySpec.build(seed)` returns a fresh policy (the random baseline seeded by `seed`, the others
ignore it), so every replay and every evaluation starts from the same state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from wdmoe.policy.bandwidth import MinMaxBandwidth
from wdmoe.policy.base import Policy
from wdmoe.policy.baselines import FastestDevices, RandomDrop
from wdmoe.policy.energy import EnergyMinJoint
from wdmoe.policy.joint import JointSelectionBandwidth
from wdmoe.policy.straggler import StragglerDrop
from wdmoe.policy.topk import TopK
from wdmoe.policy.wlr import WLRThreshold
from wdmoe.policy.wlr_cumulative import CumulativeWLR


@dataclass(frozen=True)
class PolicySpec:
    """label: unique, e.g. "wlr theta=0.4"; family: the policy's name; param: its θ, λ or p (None if none)."""

    label: str
    family: str
    param: float | None
    build: Callable[[int], Policy]


def topk() -> PolicySpec:
    return PolicySpec("topk", "topk", None, lambda _seed: TopK())


def topk_minmax() -> PolicySpec:
    return PolicySpec("topk minmax", "topk", None, lambda _seed: TopK(bandwidth=MinMaxBandwidth()))


def wlr(theta: float) -> PolicySpec:
    return PolicySpec(f"wlr theta={theta:g}", "wlr", theta, lambda _seed: WLRThreshold(theta=theta))


def joint_ratio() -> PolicySpec:
    return PolicySpec("joint ratio", "joint", None, lambda _seed: JointSelectionBandwidth(form="ratio"))


def joint_lagrangian(lam: float) -> PolicySpec:
    return PolicySpec(f"joint lambda={lam:g}", "joint", lam,
                      lambda _seed: JointSelectionBandwidth(form="lagrangian", lam=lam))


def fastest() -> PolicySpec:
    return PolicySpec("fastest", "fastest", None, lambda _seed: FastestDevices())


def random_drop(p: float) -> PolicySpec:
    return PolicySpec(f"random p={p:g}", "random", p, lambda seed: RandomDrop(p=p, seed=seed))


# The field's baselines: OUR reconstructions [R] from secondary descriptions [S] (papers.md §10), not the papers'.


def wlr_cumulative(threshold: float) -> PolicySpec:
    return PolicySpec(f"wlr-cum mass={threshold:g}", "wlr-cum", threshold,
                      lambda _seed: CumulativeWLR(threshold=threshold))


def straggler(threshold: float) -> PolicySpec:
    return PolicySpec(f"straggler keep={threshold:g}", "straggler", threshold,
                      lambda _seed: StragglerDrop(threshold=threshold))


def energy(rho: float) -> PolicySpec:
    return PolicySpec(f"energy rho={rho:g}", "energy", rho, lambda _seed: EnergyMinJoint(rho=rho))
