"""Router traces: what the router chose for every token of every MoE layer step, and what the radio model needs.

Contract: a `Trace` is a frozen value recorded from the runtime's telemetry (`record_trace`) or synthesized
(`wdmoe.sim.synthesize`); `save` / `load` round-trip it bit for bit through one `.npz` file. Router weights and
logits stay float32 as the runtime recorded them, so a replay hands the policies exactly the arrays the live run
did (the sim-live agreement test depends on it). Pure numpy: no torch.

Layout: steps in order (phase, tokens, request); each step holds its L MoE layers in order, each layer its T
tokens, so the rows of step s, layer l are `offset[s] + l * T_s + (0 .. T_s - 1)` of the concatenated arrays.
A request starts at every prefill step, as `DistributedMoE.generate` starts one per call.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wdmoe.atomic import write_atomic
from wdmoe.errors import WdmoeError
from wdmoe.radio.costs import ModelCosts
from wdmoe.runtime.telemetry import StepRecord

FORMAT_VERSION = 1
PREFILL, DECODE = 0, 1


class TraceError(WdmoeError):
    """A trace file or a recording is unusable; the message says which field and why."""


@dataclass(frozen=True)
class Trace:
    """Router choices of R requests over S forward steps, L MoE layers, k experts per token, E experts, D devices.

    Attributes:
        model: a label (model directory or "synthetic ...").
        num_devices / num_experts / top_k: D, E, k.
        layers: (L,) the decoder indices of the MoE layers, in order.
        costs: the model's `ModelCosts` (what the radio model needs of it).
        expert_device: (L, E) int, the primary device of each expert of each MoE layer at recording time.
        step_phase: (S,) PREFILL or DECODE. step_tokens: (S,) T_s. step_request: (S,) request ordinal.
        topk_index: (N, k) int64 and topk_weight: (N, k) float32, N = sum_s L * T_s rows (module docstring).
        logits: (N, E) float32 router logits, or None when not recorded.
    """

    model: str
    num_devices: int
    num_experts: int
    top_k: int
    layers: np.ndarray
    costs: ModelCosts
    expert_device: np.ndarray
    step_phase: np.ndarray
    step_tokens: np.ndarray
    step_request: np.ndarray
    topk_index: np.ndarray
    topk_weight: np.ndarray
    logits: np.ndarray | None = None

    def __post_init__(self) -> None:
        rows = int((self.step_tokens * self.num_layers).sum())
        if self.topk_index.shape != (rows, self.top_k) or self.topk_weight.shape != (rows, self.top_k):
            raise TraceError(f"trace has {self.topk_index.shape[0]} router rows of width {self.topk_index.shape[1]}"
                             f"; its {self.num_steps} steps x {self.num_layers} layers need {rows} of width "
                             f"{self.top_k}")
        if self.logits is not None and self.logits.shape != (rows, self.num_experts):
            raise TraceError(f"trace logits have shape {self.logits.shape}; expected ({rows}, {self.num_experts})")
        if self.expert_device.shape != (self.num_layers, self.num_experts):
            raise TraceError(f"trace expert_device has shape {self.expert_device.shape}; expected "
                             f"({self.num_layers}, {self.num_experts})")
        if self.num_steps and self.step_phase[0] != PREFILL:
            raise TraceError("trace starts with a decode step; a request must start with its prefill step")

    @property
    def num_layers(self) -> int:
        return int(self.layers.shape[0])

    @property
    def num_steps(self) -> int:
        return int(self.step_phase.shape[0])

    @property
    def num_requests(self) -> int:
        return int(self.step_request[-1]) + 1 if self.num_steps else 0

    @property
    def step_offset(self) -> np.ndarray:
        """(S,) the first row of each step."""
        sizes = self.step_tokens * self.num_layers
        return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)

    @property
    def num_decisions(self) -> int:
        """Token-layer decisions in the trace: sum over steps of T_s * L."""
        return int(self.topk_index.shape[0])

    def rows(self, step: int, layer_pos: int) -> slice:
        """The rows of step `step`, MoE layer number `layer_pos` (0..L-1, not the decoder index)."""
        tokens = int(self.step_tokens[step])
        start = int(self.step_offset[step]) + layer_pos * tokens
        return slice(start, start + tokens)

    def expert_device_map(self) -> dict[int, np.ndarray]:
        """{decoder layer: (E,) device}, the shape `WirelessDecider` takes."""
        return {int(layer): self.expert_device[i] for i, layer in enumerate(self.layers.tolist())}

    def save(self, path: str | Path) -> Path:
        """Write one compressed .npz (no pickles); returns the path written."""
        path = Path(path)
        meta = {"format": FORMAT_VERSION, "model": self.model, "num_devices": self.num_devices,
                "num_experts": self.num_experts, "top_k": self.top_k, "hidden_size": self.costs.hidden_size,
                "expert_flops_per_token": self.costs.expert_flops_per_token,
                "expert_weight_bytes": self.costs.expert_weight_bytes, "bytes_per_param": self.costs.bytes_per_param,
                "bs_params_per_layer": [[int(k), float(v)] for k, v in sorted(self.costs.bs_params_per_layer.items())]}
        arrays: dict[str, Any] = {
            "meta": np.array(json.dumps(meta)), "layers": self.layers, "expert_device": self.expert_device,
            "step_phase": self.step_phase.astype(np.int8), "step_tokens": self.step_tokens,
            "step_request": self.step_request, "topk_index": self.topk_index.astype(_index_dtype(self.num_experts)),
            "topk_weight": self.topk_weight}
        if self.logits is not None:
            arrays["logits"] = self.logits
        write_atomic(path, lambda tmp: _savez(tmp, arrays))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        """Read a file written by `save`; raises TraceError naming the problem."""
        path = Path(path)
        if path.is_file() and not zipfile.is_zipfile(path):  # np.load would suggest unpickling it
            raise TraceError(f"{path}: not a wdmoe trace file (not an .npz archive)")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = {name: data[name] for name in data.files if name != "meta"}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # a truncated file: BadZipFile
            raise TraceError(f"{path}: not a wdmoe trace file ({exc})") from None
        if meta.get("format") != FORMAT_VERSION:
            raise TraceError(f"{path}: trace format {meta.get('format')!r}; this wdmoe reads format "
                             f"{FORMAT_VERSION}: record or synthesize the trace again")
        bs_params = {int(k): float(v) for k, v in meta["bs_params_per_layer"]}
        costs = ModelCosts(int(meta["hidden_size"]), float(meta["expert_flops_per_token"]),
                           float(meta["expert_weight_bytes"]), bs_params, float(meta["bytes_per_param"]))
        return cls(str(meta["model"]), int(meta["num_devices"]), int(meta["num_experts"]), int(meta["top_k"]),
                   arrays["layers"], costs, arrays["expert_device"], arrays["step_phase"].astype(np.int64),
                   arrays["step_tokens"], arrays["step_request"], arrays["topk_index"].astype(np.int64),
                   arrays["topk_weight"], arrays.get("logits"))


def _index_dtype(num_experts: int) -> type[np.integer[Any]]:
    return np.int16 if num_experts <= np.iinfo(np.int16).max else np.int32


def record_trace(steps: Sequence[StepRecord], costs: ModelCosts, expert_device: dict[int, np.ndarray],
                 num_devices: int, model: str = "", with_logits: bool = True) -> Trace:
    """A Trace of the runtime's telemetry (`DistributedMoE.steps`, `.model_costs()`, `.runtime.primary`).

    Every step must hold every MoE layer of `expert_device` once, in order. Logits are kept when every layer
    recorded them and `with_logits` is set.
    """
    if not steps:
        raise TraceError("no steps to record: run the model (generate) before recording a trace")
    layers = np.array(sorted(expert_device), dtype=np.int64)
    phase: list[int] = []
    tokens: list[int] = []
    request: list[int] = []
    index: list[np.ndarray] = []
    weight: list[np.ndarray] = []
    logits: list[np.ndarray | None] = []
    for step in steps:
        got = [rec.layer for rec in step.layers]
        if got != layers.tolist():
            raise TraceError(f"step {step.index} recorded MoE layers {got}; the placement has {layers.tolist()}")
        phase.append(PREFILL if step.phase == "prefill" else DECODE)
        tokens.append(step.num_tokens)
        request.append((request[-1] if request else -1) + (phase[-1] == PREFILL))
        for rec in step.layers:
            if rec.num_tokens != step.num_tokens:
                raise TraceError(f"step {step.index} layer {rec.layer} routed {rec.num_tokens} tokens; the step "
                                 f"has {step.num_tokens}")
            index.append(rec.topk_index)
            weight.append(rec.topk_weight)
            logits.append(rec.logits)
    if phase[0] != PREFILL:
        raise TraceError("the first recorded step is a decode step; clear the telemetry before a request")
    keep_logits = with_logits and all(x is not None for x in logits)
    table = np.stack([np.asarray(expert_device[int(layer)], dtype=np.int64) for layer in layers])
    kept = [x for x in logits if x is not None]
    return Trace(model, num_devices, int(table.shape[1]), int(index[0].shape[1]), layers, costs, table,
                 np.array(phase, dtype=np.int64), np.array(tokens, dtype=np.int64), np.array(request, dtype=np.int64),
                 np.concatenate(index).astype(np.int64), np.concatenate(weight).astype(np.float32, copy=False),
                 np.concatenate(kept).astype(np.float32, copy=False) if keep_logits else None)


def _savez(tmp: Path, arrays: dict[str, Any]) -> None:
    with tmp.open("wb") as handle:
        np.savez_compressed(handle, **arrays)
