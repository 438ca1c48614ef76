"""Policies by name, for the CLI and config files: topk | wlr | joint | fastest | random | prune, and the field's
baselines as OUR reconstructions [R] from secondary descriptions [S] (papers.md §10): wlr-cum | straggler | energy."""

from __future__ import annotations

from wdmoe.errors import WdmoeError
from wdmoe.policy.bandwidth import MinMaxBandwidth
from wdmoe.policy.base import Policy
from wdmoe.policy.baselines import FastestDevices, RandomDrop
from wdmoe.policy.energy import EnergyMinJoint
from wdmoe.policy.joint import JointSelectionBandwidth
from wdmoe.policy.prune import GateThreshold
from wdmoe.policy.straggler import StragglerDrop
from wdmoe.policy.topk import TopK
from wdmoe.policy.wlr import WLRThreshold
from wdmoe.policy.wlr_cumulative import CumulativeWLR

POLICY_NAMES = ("topk", "wlr", "joint", "fastest", "random", "prune", "wlr-cum", "straggler", "energy")


def make_policy(name: str, theta: float = 0.5, drop_p: float = 0.3, seed: int = 0) -> Policy:
    """The policy called `name`.

    Args:
        name: one of POLICY_NAMES.
        theta: WLR threshold in [0, 1] (wlr), the gate-weight share below which an expert is pruned (prune), the
            gate mass kept in WLR order (wlr-cum), or the gate mass every token keeps (straggler; energy's rho).
        drop_p: drop probability in [0, 1] (random only).
        seed: random generator seed (random only).
    """
    if name == "topk":
        return TopK()
    if name == "wlr":
        return WLRThreshold(theta=theta)
    if name == "joint":
        return JointSelectionBandwidth()
    if name == "fastest":
        return FastestDevices()
    if name == "random":
        return RandomDrop(p=drop_p, seed=seed)
    if name == "prune":
        return GateThreshold(threshold=theta)
    if name == "wlr-cum":
        return CumulativeWLR(threshold=theta)
    if name == "straggler":
        return StragglerDrop(threshold=theta)
    if name == "energy":
        return EnergyMinJoint(rho=theta)
    raise WdmoeError(f"policy {name!r} is unknown; choose one of {', '.join(POLICY_NAMES)}")


__all__ = ["POLICY_NAMES", "MinMaxBandwidth", "make_policy"]
