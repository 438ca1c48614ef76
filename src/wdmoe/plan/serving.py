"""Updating in the server: a model split by the planner for a cluster, with the controller that re-plans it.

Contract: `planned_model(model_dir, cluster_file, options)` calibrates the model (an HF directory; a split
directory is assembled back and gets uniform popularity), plans it on the cluster (`plan_deployment`), splits it
with the plan's placement and bit widths into a temporary directory that the model owns (`open_model(...,
temporary=)`: it lives as long as the model), opens it with `options` (policy, scenario, air; the plan decides the
devices, the pool is in-process), and returns the model with an attached `PlanController` whose new splits go
under that directory too. `wdmoe serve --plan-cluster FILE` calls `controller.between_requests(model)` after
every request.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from wdmoe.plan.cluster import load_cluster
from wdmoe.plan.live import PlanController, plan_bits
from wdmoe.plan.planner import plan_deployment

if TYPE_CHECKING:
    from wdmoe.runtime.model import DistributedMoE
    from wdmoe.runtime.open import ModelOptions

log = logging.getLogger(__name__)


def planned_model(
    model_dir: Path, cluster_file: Path, options: ModelOptions | None = None
) -> tuple[DistributedMoE, PlanController]:
    """The model split by a plan for `cluster_file`, and its attached controller (module docstring)."""
    from wdmoe.model.split import load_hf_model, split_model
    from wdmoe.plan.calibrate import calibrate, requirement_of
    from wdmoe.plan.source import assemble_model
    from wdmoe.runtime.open import ModelOptions, open_model

    options = options or ModelOptions()
    if options.backend != "local":
        raise ValueError(f"backend = {options.backend!r}: a plan re-splits the model between requests, so its "
                         "devices run in-process (backend local)")

    model_dir = Path(model_dir)
    cluster = load_cluster(cluster_file)
    is_split = (model_dir / "manifest.json").is_file()
    if is_split:
        hf = assemble_model(model_dir)
        requirement = requirement_of(hf, model_dir.name)
    else:
        requirement, _ = calibrate(model_dir)
        hf = load_hf_model(model_dir)
    plan = plan_deployment(requirement, cluster.statuses, cluster.radio)
    tmp = tempfile.TemporaryDirectory(prefix="wdmoe-plan-")
    root = Path(tmp.name)
    placement = plan.to_placement()
    tokenizer = model_dir / "bs" if is_split else model_dir
    split_model(hf, root / "split", placement.num_devices, placement, tokenizer, plan_bits(plan))
    model = open_model(root / "split", dataclasses.replace(options, devices=None), temporary=tmp)
    # hf is already in memory: a re-plan re-splits from it
    controller = PlanController(plan, requirement, cluster.radio, root / "plans", source=model_dir, source_model=hf)
    controller.attach(model)
    log.info(
        "%s plan on %d devices of %s: expected %.4g ms/token (round-robin %.4g ms)",
        plan.kind.value,
        len(plan.devices),
        cluster_file,
        plan.expected_latency_s * 1e3,
        (plan.round_robin_latency_s or float("nan")) * 1e3,
    )
    return model, controller
