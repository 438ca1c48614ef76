"""Updating in the live runtime (papers.md §4.5): a controller that re-plans a running model between requests.

Contract: `PlanController(plan, requirement, radio, workdir)` holds a `Registry`, the running `Plan` and a
`Replanner`. `attach(model)` makes it listen to the model's telemetry: a `FailoverEvent("failed", k)` of a
`LayerRecord` removes runtime device k (the plan's `devices[k]`) from the registry at once; "rejoined" lets it
publish again. `between_requests(model)`, called on the model's thread when no request runs:

1. perception: every live device of the pool reports what it holds (`wdmoe.plan.reports`) and publishes its
   status, stamped by the registry's clock; devices that joined (`publish`) publish their declared status;
2. decision: `Replanner.decide(plan, registry.live(), requirement)` (triggers, hysteresis, migrations);
3. action, if it switches, or if devices left and the old plan runs on the rest (then the old plan without
   them, no migration: a dead device leaves the runtime's placement either way): `split_model` writes the new
   placement into `workdir/plan-N` from the model's weights (`wdmoe.plan.source`: the BS's split, which holds
   every expert even when its device died), and
   `wdmoe.runtime.replace.apply_placement` rebinds the live model's runtime to the new placement and pool.

It returns a `LiveUpdate` with the migration cost the replanner computed (bytes moved, seconds over the radio).
The in-process pool is rebuilt from the new split; a Ray pool is not (the new shards would have to reach the
nodes): pass `make_pool` to build one.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wdmoe.plan.deployment import Plan
from wdmoe.plan.errors import PlanError
from wdmoe.plan.links import RadioSettings
from wdmoe.plan.replan import Replanner, ReplanResult
from wdmoe.plan.reports import DeviceReport, device_reports, live_status
from wdmoe.plan.requirement import ModelRequirement
from wdmoe.plan.status import Registry, ResourceStatus

if TYPE_CHECKING:
    from wdmoe.runtime.model import DistributedMoE
    from wdmoe.runtime.replace import Swap
    from wdmoe.runtime.telemetry import StepRecord

log = logging.getLogger(__name__)
PoolFactory = Callable[[Path], Any]  # split directory -> device pool


@dataclass(frozen=True)
class LiveUpdate:
    """One `between_requests`: the replanner's result (None when planning failed: `error` says why), whether
    the model now runs a new plan, its split, and the migration's bytes and radio seconds."""

    result: ReplanResult | None
    switched: bool
    split_dir: Path | None = None
    migrated_bytes: int = 0
    migration_s: float = 0.0
    reports: tuple[DeviceReport, ...] = ()
    swap: Swap | None = None
    error: str = ""


def plan_bits(plan: Plan) -> dict[tuple[int, int], int]:
    """The plan's widths as split_model's per-expert table; 32 (as the model has it) is left out."""
    return {
        (layer, e): int(plan.bits[pos, e])
        for pos, layer in enumerate(plan.moe_layers)
        for e in range(plan.num_experts)
        if int(plan.bits[pos, e]) in (4, 8, 16)
    }


class PlanController:
    """Perception, decision and action for a running model (module docstring)."""

    def __init__(
        self,
        plan: Plan,
        requirement: ModelRequirement,
        radio: RadioSettings,
        workdir: Path,
        replanner: Replanner | None = None,
        clock: Callable[[], float] = time.monotonic,
        ttl_s: float = 60.0,
        source: Path | None = None,
        make_pool: PoolFactory | None = None,
        source_model: Any = None,
    ) -> None:
        """`source`: an HF or split directory of the model (default: the attached model's split);
        `source_model`: the whole model (transformers) if the caller holds it in memory already (default: loaded
        from `source` at the first re-plan); `make_pool`: builds the pool of a new split (default in-process)."""
        self.plan = plan
        self.requirement = requirement
        self.replanner = replanner or Replanner(radio)
        self.registry = Registry(ttl_s, clock)
        self.workdir = Path(workdir)
        self.source = source  # an HF or split directory of the model; default: the attached model's split
        self.make_pool = make_pool
        self.declared: dict[str, ResourceStatus] = {s.device: s for s in plan.devices}
        self.left: set[str] = set()
        self.updates: list[LiveUpdate] = []
        self._source_model = source_model
        self._splits = 0
        for status in plan.devices:
            self.registry.publish(status)

    # -- perception --------------------------------------------------------------------------------------------
    def attach(self, model: DistributedMoE) -> None:
        """Listen to `model`'s telemetry; the weights source defaults to its split directory as of now."""
        self.source = self.source or model.root
        model.telemetry.listeners.append(self.on_step)

    def on_step(self, step: StepRecord) -> None:
        names = self.plan.device_names
        for record in step.layers:
            for event in record.failover:
                if event.device >= len(names):
                    continue
                if event.kind == "failed":
                    self.leave(names[event.device])
                else:
                    self.left.discard(names[event.device])

    def leave(self, device: str) -> None:
        """`device` left (it failed, or announced it): out of the registry until it publishes again."""
        self.left.add(device)
        self.registry.remove(device)

    def publish(self, status: ResourceStatus) -> None:
        """A device joins, or declares new resources."""
        self.left.discard(status.device)
        self.declared[status.device] = status
        self.registry.publish(status)

    def perceive(self, model: DistributedMoE) -> list[DeviceReport]:
        """Every live device publishes its status now (module docstring, step 1)."""
        now_s = self.registry.clock()
        reports = device_reports(model.pool, model.steps, model.runtime.liveness.dead)
        running = self.plan.device_names
        for report in reports:
            name = running[report.device]
            if name not in self.left:
                self.registry.publish(live_status(self.declared[name], report, now_s))
        for name, status in self.declared.items():  # joined, not running yet
            if name not in running and name not in self.left:
                self.registry.publish(self._stamped(status, now_s))
        return reports

    @staticmethod
    def _stamped(status: ResourceStatus, now_s: float) -> ResourceStatus:
        return dataclasses.replace(status, timestamp_s=now_s)

    # -- decision and action ---------------------------------------------------------------------------------
    def between_requests(self, model: DistributedMoE) -> LiveUpdate:
        """Perceive, decide, and apply a new plan if the replanner switches (module docstring)."""
        reports = tuple(self.perceive(model))
        try:
            result = self.replanner.decide(self.plan, self.registry.live(), self.requirement)
        except PlanError as exc:
            log.warning("re-planning failed, the model keeps running on failover: %s", exc)
            update = LiveUpdate(None, False, reports=reports, error=str(exc))
            self.updates.append(update)
            return update
        if not result.switched:
            kept = _without_left(self.plan, self.registry.live(), result.old_latency_s)
            if kept is None:
                update = LiveUpdate(result, False, reports=reports)
                self.updates.append(update)
                return update
            result = dataclasses.replace(result, switched=True, plan=kept)  # the old plan on its live devices
        update = self._apply(model, result, reports)
        self.updates.append(update)
        return update

    def _apply(self, model: DistributedMoE, result: ReplanResult, reports: tuple[DeviceReport, ...]) -> LiveUpdate:
        from wdmoe.model.split import split_model
        from wdmoe.runtime.replace import apply_placement

        plan, placement = result.plan, result.plan.to_placement()
        self._splits += 1
        split_dir = self.workdir / f"plan-{self._splits}"
        split_model(
            self._weights(), split_dir, placement.num_devices, placement, _tokenizer_dir(self.source), plan_bits(plan)
        )
        previous = model.root
        pool = self.make_pool(split_dir) if self.make_pool else None
        swap = apply_placement(model, placement, split_dir, pool)
        self.plan = plan
        self.left = {name for name in self.left if name in plan.device_names}
        if previous.parent == self.workdir and previous.name.startswith("plan-"):
            shutil.rmtree(previous, ignore_errors=True)  # a split this controller wrote and nothing runs any more
        moved = int(np.sum([m.num_bytes for m in result.migrations]))
        log.info(
            "new plan applied: %d -> %d devices, %d expert copies moved (%d bytes, %.3g s over the radio); "
            "expected %.4g ms/token (old plan on the new state: %.4g ms)",
            swap.devices_before,
            swap.devices_after,
            len(result.migrations),
            moved,
            result.migration_s,
            result.new_latency_s * 1e3,
            result.old_latency_s * 1e3,
        )
        return LiveUpdate(result, True, split_dir, moved, result.migration_s, reports, swap)

    def _weights(self) -> Any:
        """The whole model, loaded once: from an HF directory, or assembled from a split (`plan.source`)."""
        if self._source_model is None:
            from wdmoe.model.split import load_hf_model
            from wdmoe.plan.source import assemble_model

            if self.source is None:
                raise PlanError("the controller has no weights source: attach() it to the model first")
            source = Path(self.source)
            hf = (source / "config.json").is_file() and not (source / "manifest.json").is_file()
            self._source_model = load_hf_model(source) if hf else assemble_model(source)
        return self._source_model


def _without_left(plan: Plan, statuses: Sequence[ResourceStatus], latency_s: float) -> Plan | None:
    """The running plan without its devices that left (their copies dropped, nothing moves), if it runs on the
    rest; None if no device left or it cannot run. Keeps a dead device out of the runtime's placement."""
    index = {s.device: k for k, s in enumerate(statuses)}
    if all(name in index for name in plan.device_names) or not np.isfinite(latency_s):
        return None
    names = plan.device_names
    copies = tuple(
        tuple(tuple(index[names[d]] for d in ids if names[d] in index) for ids in row) for row in plan.copies
    )
    if any(not ids for row in copies for ids in row):
        return None
    server = None if plan.server is None else index.get(names[plan.server])
    if plan.server is not None and server is None:
        return None
    return dataclasses.replace(
        plan, devices=tuple(statuses), copies=copies, expected_latency_s=latency_s, server=server
    )


def _tokenizer_dir(source: Path | None) -> Path | None:
    if source is None:
        return None
    return source / "bs" if (Path(source) / "manifest.json").is_file() else Path(source)
