"""Opening a model: the one place that turns a model directory and options into a running `DistributedMoE`.

    model = open_model(path, ModelOptions(devices=4, policy=WLRThreshold(0.5), scenario=radio))
    model = open_model(None, ModelOptions(backend="ray", pool_options={"address": "10.0.0.1:6379"}))

Contract: `open_model(path, options)` opens the split directory `path` as it is, or splits the Hugging Face
directory `path` on the fly (`path = None`: the shipped model) over `options.devices` devices (default: the
scenario's device count when a scenario is given, else 8) into a temporary directory the model owns
(`model.close()` removes it); builds the device pool of `options.backend` (`local`: in-process, on `torch_device`
in `dtype`; `ray`: one actor per device, with `pool_options`); then selects experts with `options.policy` over
`options.scenario` (neither: the model's own top-k, no radio; a policy alone: the default scenario) and compresses
the air with `options.air`. Every command (run, demo, eval, serve, bench, trace record, experiment, the plan in
`serve --plan-cluster`) and `wdmoe.experiments` open their model here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import TYPE_CHECKING, Any

import torch

from wdmoe.backends.factory import make_pool
from wdmoe.model.shards import MANIFEST, Manifest
from wdmoe.model.shipped import default_model_dir
from wdmoe.model.stream_split import split_dir_for
from wdmoe.runtime.model import DistributedMoE

if TYPE_CHECKING:
    from wdmoe.config import Scenario
    from wdmoe.policy.base import Policy
    from wdmoe.runtime.air import AirCompression


@dataclass(frozen=True)
class ModelOptions:
    """How to open a model (module docstring).

    Attributes:
        devices: devices to split a HF directory over; a split directory's count must equal it (None: any).
        backend: "local" (in-process devices) or "ray" (one actor per device).
        pool_options: the Ray pool's options (`wdmoe.backends.factory.make_pool`: address, token_file,
            transport, emulate_air, call_timeout_s, ...); the local pool takes torch_device and dtype instead.
        torch_device: where the BS (and the in-process devices) compute: "cpu", "cuda" or "cuda:N".
        dtype: the weights' dtype at load (None: as stored in the split).
        policy: the expert-selection policy (None: top-k, over the scenario if one is given).
        scenario: the radio scenario (None: the default one, when a policy is given).
        air: the air compression (None: activations sent as computed).
    """

    devices: int | None = None
    backend: str = "local"
    pool_options: Mapping[str, Any] = field(default_factory=dict)
    torch_device: str = "cpu"
    dtype: torch.dtype | None = None
    policy: Policy | None = None
    scenario: Scenario | None = None
    air: AirCompression | None = None


def open_model(
    path: Path | None = None, options: ModelOptions | None = None, temporary: TemporaryDirectory[str] | None = None
) -> DistributedMoE:
    """The model at `path` (None: the shipped one), opened as `options` say (module docstring); `temporary`: the
    temporary directory holding the split directory `path`, handed to the model (it removes it on close)."""
    options = options or ModelOptions()
    path = Path(path) if path is not None else default_model_dir()
    devices = options.devices
    is_split = (path / MANIFEST).is_file()
    if options.scenario is not None and devices is None and not is_split:
        devices = options.scenario.num_devices  # split a HF directory over the scenario's devices
    if temporary is not None and not is_split:
        raise ValueError(f"temporary= holds a split the caller made, but {path} has no {MANIFEST}: give its split")
    root, tmp = split_dir_for(path, devices)
    owned = tmp or temporary
    try:
        pool_options = (
            dict(options.pool_options)
            if options.backend == "ray"
            else {"torch_device": options.torch_device, "dtype": options.dtype}
        )
        pool = make_pool(options.backend, root, Manifest.read(root), **pool_options)
        model = DistributedMoE.from_pretrained(
            root, num_devices=devices, pool=pool, torch_device=options.torch_device, dtype=options.dtype,
            policy=options.policy, scenario=options.scenario, temporary=owned,
        )
    except BaseException:
        if tmp is not None:  # ours: nobody else holds it yet
            tmp.cleanup()
        raise
    if options.air is not None:
        model.set_compression(options.air.dtype, options.air.fusion_tau)
    return model
