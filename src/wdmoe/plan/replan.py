"""Updating (papers.md §4.5): decide, from the running plan and the registry's new state, whether to re-plan.

Contract: `Replanner(radio).decide(plan, statuses, requirement)` is a pure function. It lists the triggers
(device join or leave, free memory / FLOP/s / load / link change beyond thresholds, expert-popularity drift);
without one it keeps the plan and plans nothing. With one it plans anew and switches only if

    the old plan cannot run any more (an expert lost every copy, or a device holds more than its free memory), or
    new_s + migration_s / horizon_tokens < old_s * (1 - margin_rel)        (hysteresis)

where old_s is the old plan's expected latency on the NEW state (its dead devices dropped, failover to the next
copy), new_s the new plan's, and migration_s the seconds to ship every new (layer, expert) copy over the radio:
from a live device holding it (uplink then downlink) or else from the BS's split (downlink), with the whole band,
one after another, by wdmoe.radio.rate.share_time_s, averaged over the channel samples. Thresholds are
papers.md §4.5's [R] values; the margin and the horizon are ours [R]. An intra-server plan keeps its recorded
latency while its server lives and fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from wdmoe.plan.cost import LatencyModel
from wdmoe.plan.deployment import Copies, Plan, PlanKind, copies_memory_bytes
from wdmoe.plan.intra import intra_latency_s
from wdmoe.plan.links import RadioSettings, channel_samples
from wdmoe.plan.planner import PlannerConfig, plan_deployment
from wdmoe.plan.requirement import ModelRequirement
from wdmoe.plan.status import ResourceStatus
from wdmoe.radio.rate import share_time_s


class Trigger(Enum):
    JOIN = "join"
    LEAVE = "leave"
    RESOURCE = "resource"
    CHANNEL = "channel"
    POPULARITY = "popularity"


@dataclass(frozen=True)
class Thresholds:
    """When a change counts (relative changes are |new - old| / old)."""

    memory_rel: float = 0.2  # free memory, §4.5 [R]
    compute_rel: float = 0.2  # FLOP/s, §4.5 [R]
    load_abs: float = 0.2  # utilisation, absolute [R]
    link_rel: float = 0.3  # link rate or distance, §4.5 [R]
    popularity_kl: float = 0.1  # nats, KL(new || old) of a layer's popularity, §4.5 [R]
    margin_rel: float = 0.05  # hysteresis: the new plan must be this much faster [R]
    horizon_tokens: float = 1000.0  # tokens the migration time is spread over [R]


@dataclass(frozen=True)
class Migration:
    """One expert copy to ship: from a device (None: from the BS's split) to a device, its bytes and seconds."""

    layer: int
    expert: int
    to_device: str
    from_device: str | None
    num_bytes: int
    seconds: float


@dataclass(frozen=True)
class ReplanResult:
    """triggers: (trigger, detail). plan: the plan to run (the candidate if switched). old_latency_s: the old plan
    on the new state (inf if it cannot run); new_latency_s: the candidate's (nan if none was made)."""

    triggers: tuple[tuple[Trigger, str], ...]
    switched: bool
    plan: Plan
    candidate: Plan | None
    migrations: tuple[Migration, ...]
    old_latency_s: float
    new_latency_s: float
    migration_s: float


def _rel(new: float, old: float) -> float:
    return abs(new - old) / old if old > 0 else (0.0 if new == old else float("inf"))


def _kl(new: np.ndarray, old: np.ndarray) -> float:
    p = np.maximum(new, 1e-12) / np.maximum(new, 1e-12).sum()
    q = np.maximum(old, 1e-12) / np.maximum(old, 1e-12).sum()
    return float(np.sum(p * np.log(p / q)))


def _status_triggers(old: ResourceStatus, new: ResourceStatus, t: Thresholds) -> list[tuple[Trigger, str]]:
    out = []
    changes = (
        (Trigger.RESOURCE, "free_memory_bytes", _rel(new.free_memory_bytes, old.free_memory_bytes), t.memory_rel),
        (Trigger.RESOURCE, "flops_per_s", _rel(new.profile.flops_per_s, old.profile.flops_per_s), t.compute_rel),
        (Trigger.RESOURCE, "load", abs(new.load - old.load), t.load_abs),
    )
    for trigger, name, change, limit in changes:
        if change > limit:
            out.append((trigger, f"{new.device}: {name} changed by {change:.3g} (> {limit:g})"))
    for name in ("link_rate_bps", "distance_m"):
        a, b = getattr(old, name), getattr(new, name)
        if (a is None) != (b is None) or (a is not None and b is not None and _rel(b, a) > t.link_rel):
            out.append((Trigger.CHANNEL, f"{new.device}: {name} {a} -> {b}"))
    return out


def _surviving(plan: Plan, index: dict[str, int]) -> Copies | None:
    """The old copies on the new device indices, dead devices dropped; None if an expert lost every copy."""
    names = plan.device_names
    rows = []
    for row in plan.copies:
        kept = tuple(tuple(index[names[d]] for d in ids if names[d] in index) for ids in row)
        if any(not ids for ids in kept):
            return None
        rows.append(kept)
    return tuple(rows)


@dataclass(frozen=True)
class Replanner:
    """Re-planning with hysteresis (module docstring)."""

    radio: RadioSettings
    thresholds: Thresholds = field(default_factory=Thresholds)
    config: PlannerConfig = field(default_factory=PlannerConfig)

    def triggers(
        self, plan: Plan, statuses: Sequence[ResourceStatus], popularity: np.ndarray
    ) -> list[tuple[Trigger, str]]:
        old = {s.device: s for s in plan.devices}
        new = {s.device: s for s in statuses}
        out = [(Trigger.JOIN, f"{d} joined") for d in new if d not in old]
        out += [(Trigger.LEAVE, f"{d} left") for d in old if d not in new]
        for d in old.keys() & new.keys():
            out += _status_triggers(old[d], new[d], self.thresholds)
        for pos in range(plan.popularity.shape[0]):
            kl = _kl(np.asarray(popularity)[pos], plan.popularity[pos])
            if kl > self.thresholds.popularity_kl:
                out.append((Trigger.POPULARITY, f"MoE layer {plan.moe_layers[pos]}: KL {kl:.3g} nats"))
        return out

    def old_latency_s(self, plan: Plan, statuses: Sequence[ResourceStatus], requirement: ModelRequirement) -> float:
        """The old plan's expected latency on the new state; inf if it cannot run there."""
        index = {s.device: k for k, s in enumerate(statuses)}
        copies = _surviving(plan, index)
        if copies is None:
            return float("inf")
        used = copies_memory_bytes(copies, plan.expert_bytes, len(statuses))
        model = LatencyModel(requirement, statuses, self.radio, plan.bits)
        if plan.kind is PlanKind.INTRA and plan.server is not None:  # the same objective, the host tier included
            server = index[plan.device_names[plan.server]]
            host = next((t.experts for t in plan.tiers if t.name == "host"), ())
            return intra_latency_s(model, server, statuses[server], host)
        if np.any(used > np.array([s.free_memory_bytes for s in statuses])):
            return float("inf")
        return model.token_s(np.array([[ids[0] for ids in row] for row in copies], dtype=np.int64))

    def migrations(self, old: Plan, new: Plan) -> tuple[Migration, ...]:
        """Every copy the new plan has and the old one had not, with its radio transfer time."""
        links = channel_samples(new.devices, self.radio)
        names = new.device_names
        alive = {name: k for k, name in enumerate(names)}
        band = self.radio.bandwidth_hz
        out = []
        for pos, row in enumerate(new.copies):
            for e, ids in enumerate(row):
                had = [old.device_names[d] for d in old.copies[pos][e]]
                source = next((n for n in had if n in alive), None)
                bits = float(new.expert_bytes[pos, e]) * 8.0
                for d in ids:
                    if names[d] in had:
                        continue
                    seconds = np.mean(
                        [
                            float(share_time_s(bits, band, link.snr_dl_per_hz[d]))
                            + (float(share_time_s(bits, band, link.snr_ul_per_hz[alive[source]])) if source else 0.0)
                            for link in links
                        ]
                    )
                    out.append(Migration(new.moe_layers[pos], e, names[d], source, int(bits // 8), float(seconds)))
        return tuple(out)

    def decide(
        self,
        plan: Plan,
        statuses: Sequence[ResourceStatus],
        requirement: ModelRequirement,
        bits: np.ndarray | None = None,
    ) -> ReplanResult:
        """Keep `plan` or switch to a new one (module docstring)."""
        found = tuple(self.triggers(plan, statuses, requirement.popularity))
        old_s = self.old_latency_s(plan, statuses, requirement)
        if not found and np.isfinite(old_s):
            return ReplanResult(found, False, plan, None, (), old_s, float("nan"), 0.0)
        candidate = plan_deployment(requirement, statuses, self.radio, plan.bits if bits is None else bits, self.config)
        moves = self.migrations(plan, candidate)
        migration_s = float(sum(m.seconds for m in moves))
        t = self.thresholds
        effective = candidate.expected_latency_s + migration_s / t.horizon_tokens
        switch = not np.isfinite(old_s) or effective < old_s * (1.0 - t.margin_rel)
        return ReplanResult(
            found,
            switch,
            candidate if switch else plan,
            candidate,
            moves if switch else (),
            old_s,
            candidate.expected_latency_s,
            migration_s,
        )
