"""The device side: an expert worker that holds only its own verified shard and runs its experts' FFNs.

Each layer's experts run in the model's own experts class (`wdmoe.model.device_experts`), except the SwiGLU
classes of `SWIGLU_CLASSES` and format-1 splits, whose `gate_up_proj` / `down_proj` run in
`wdmoe.model.expert.expert_ffn` (the same math, tested equal; it has the Triton kernels and CUDA graphs below).

A quantized expert (int8 / int4, `wdmoe.model.quantize`) stays quantized in the worker's memory and is dequantized
to the compute dtype each time it runs; a float16-stored one is cast to the compute dtype at load. A batch whose
hidden states are in another dtype than the weights (a pool that loads its shards as stored, a BS cast to another
dtype) is computed in the weights' dtype and answered in the batch's.

On CUDA the worker's `compute_s` is the host time to launch its kernels (they run asynchronously), not their
GPU time; the GPU time of an expert is what `bench/gpu/expert_ffn.py` measures.

CUDA graphs (decode): on CUDA, a batch of one row for one expert (every decode step of the in-process pool) runs
as a replay of a `torch.cuda.CUDAGraph` of that (layer, expert)'s FFN, captured on its first such call: one
input copy and one graph launch instead of the FFN's separate kernel launches, which at decode cost more host
time than the GPU spends on them. The replay runs the same kernels on the same shapes, so its output is the eager
output bit for bit. The returned output is the graph's static output buffer: the next one-row call of the same
(layer, expert) on this worker overwrites it, on the same CUDA stream. The runtime reads every result (the
combine's kernels are queued on that stream) before it sends the next step, so its reads are ordered before
that overwrite; a caller that keeps a result across calls must clone it. `cuda_graphs=False`, or the environment
variable WDMOE_CUDA_GRAPHS=0 at construction, turns graphs off; the CPU never uses them.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers.activations import ACT2FN

from wdmoe.backends.base import DeviceBatch, DeviceResult
from wdmoe.errors import ShardError
from wdmoe.model.device_experts import LocalExperts, load_layer, meta_experts, runs_as_swiglu
from wdmoe.model.expert import expert_ffn, is_silu
from wdmoe.model.quantize import QUANTIZED_BITS, QuantizedTensor
from wdmoe.model.shards import MANIFEST, Manifest, read_safetensors

CUDA_GRAPHS_ENV = "WDMOE_CUDA_GRAPHS"  # "0": no CUDA graphs on workers built while it is set


@dataclass(frozen=True)
class _OneRowGraph:
    """A captured one-row FFN: copy the input into `static_in`, replay `graph`, read `static_out`."""

    graph: torch.cuda.CUDAGraph
    static_in: torch.Tensor  # (1, H)
    static_out: torch.Tensor  # (1, H)


class ExpertWorker:
    """Device `device` of a split: its (layer, expert) weights, loaded after the manifest's checksum matches."""

    def __init__(
        self,
        root: Path,
        manifest: Manifest,
        device: int,
        torch_device: str = "cpu",
        dtype: torch.dtype | None = None,
        cuda_graphs: bool | None = None,
    ) -> None:
        """Load device `device`'s shard onto `torch_device`, cast to `dtype` (None: as stored). `cuda_graphs`:
        replay one-row calls as CUDA graphs (None: on CUDA unless WDMOE_CUDA_GRAPHS=0; never on the CPU)."""
        self.device = device
        self.cuda_graphs = self.graphs_wanted(torch_device, cuda_graphs)  # may be switched later (benches A/B)
        self._graphs: dict[tuple[int, int], _OneRowGraph] = {}
        self._graph_pool: Any = None  # one memory pool shared by this worker's graphs (torch.cuda.graph_pool_handle)
        if manifest.hidden_act not in ACT2FN:
            raise ShardError(f"{root / MANIFEST}: manifest field 'hidden_act' = {manifest.hidden_act!r}: not an "
                             f"activation transformers knows (e.g. silu, gelu); the model's config.json has it")
        act = ACT2FN[manifest.hidden_act]
        # transformers' SiLU module is F.silu behind a module call (~1 us each, once per expert call): F.silu itself
        self.act = torch.nn.functional.silu if is_silu(act) else act
        self.weights: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.quantized: dict[tuple[int, int], tuple[QuantizedTensor, QuantizedTensor]] = {}
        self.layers: dict[int, LocalExperts] = {}  # layers whose experts run in the model's own class
        quantization = manifest.quantization
        self.compute_dtype = dtype or (getattr(torch, quantization.dtype) if quantization else None)
        shard = manifest.device_shard(root, device)
        if shard is None:
            return
        tensors = read_safetensors(shard, torch_device)
        modules = meta_experts(manifest.config) if manifest.config is not None else {}
        by_layer: dict[int, list[int]] = {}
        for layer, expert in manifest.placement.experts_on(device):
            if not any(name.startswith(f"layers.{layer}.experts.{expert}.") for name in tensors):
                raise ShardError(
                    f"{shard} holds no tensor of expert {expert} of layer {layer}, which {root / MANIFEST} (field "
                    f"'placement.layers') puts on device {device}: the shard and the manifest are from different "
                    "splits (swapped shards?); re-run `wdmoe split`"
                )
            by_layer.setdefault(layer, []).append(expert)
        for layer, experts in by_layer.items():
            module = modules.get(layer)
            if module is not None and not runs_as_swiglu(module):  # the model's own class (device_experts)
                bits = {e: manifest.expert_bits(layer, e) for e in experts}
                self.layers[layer] = load_layer(module, layer, experts, tensors, bits, dtype or self.compute_dtype)
                continue
            for expert in experts:
                self._load_swiglu(tensors, manifest, layer, expert, dtype)

    def _load_swiglu(
        self, tensors: dict[str, torch.Tensor], manifest: Manifest, layer: int, expert: int, dtype: torch.dtype | None
    ) -> None:
        """One expert of a SwiGLU class (`wdmoe.model.device_experts.SWIGLU_CLASSES`) or of a format-1 split."""
        prefix = f"layers.{layer}.experts.{expert}."
        bits = manifest.expert_bits(layer, expert)
        if bits in QUANTIZED_BITS:
            self.quantized[(layer, expert)] = (
                QuantizedTensor.from_tensors(tensors, prefix + "gate_up_proj", bits),
                QuantizedTensor.from_tensors(tensors, prefix + "down_proj", bits),
            )
            return
        gate_up, down = tensors[prefix + "gate_up_proj"], tensors[prefix + "down_proj"]
        cast = dtype or (self.compute_dtype if bits == 16 else None)
        self.weights[(layer, expert)] = (gate_up.to(cast), down.to(cast)) if cast else (gate_up, down)

    @staticmethod
    def graphs_wanted(torch_device: str, cuda_graphs: bool | None) -> bool:
        """Whether a worker on `torch_device` replays one-row calls as CUDA graphs: never off CUDA; there, as asked,
        or (None) unless the environment variable WDMOE_CUDA_GRAPHS is "0"."""
        if torch.device(torch_device).type != "cuda":
            return False
        return os.environ.get(CUDA_GRAPHS_ENV, "1") != "0" if cuda_graphs is None else cuda_graphs

    @property
    def num_experts_held(self) -> int:
        return len(self.weights) + len(self.quantized) + sum(len(held.ids) for held in self.layers.values())

    @property
    def weight_bytes(self) -> int:
        """Bytes of expert weights this device holds in memory (quantized ones at their stored size)."""
        plain = sum(t.numel() * t.element_size() for pair in self.weights.values() for t in pair)
        quantized = sum(q.nbytes for pair in self.quantized.values() for q in pair)
        return plain + quantized + sum(held.nbytes for held in self.layers.values())

    @property
    def graphed(self) -> tuple[tuple[int, int], ...]:
        """The (layer, expert) pairs whose one-row FFN has been captured as a CUDA graph."""
        return tuple(self._graphs)

    def _expert(self, layer: int, expert: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(gate_up_proj, down_proj) ready to compute with: dequantized here if stored quantized."""
        weights = self.weights.get((layer, expert))
        if weights is not None:
            return weights
        gate_up, down = self.quantized[(layer, expert)]
        dtype = self.compute_dtype or torch.float32
        return gate_up.dequantize(dtype), down.dequantize(dtype)

    def run(self, batch: DeviceBatch) -> DeviceResult:
        start = time.perf_counter()
        token_index, expert = batch.token_index, batch.expert  # (m,) each, on the CPU
        held = self.layers.get(batch.layer)
        if held is not None:
            output = held.run(_gather(batch.hidden, token_index), expert)
            return DeviceResult(batch.device, output, time.perf_counter() - start)
        if self.cuda_graphs and expert.numel() == 1 and batch.hidden.shape[0] == 1 and batch.hidden.is_cuda:
            replayed = self._replay(batch.layer, int(expert.item()), batch.hidden)
            if replayed is not None:
                return DeviceResult(batch.device, replayed, time.perf_counter() - start)
        experts = expert.tolist()  # on Python ints (m is small: no kernels)
        if experts and experts.count(experts[0]) == len(experts):  # one expert (each batch of a split with one
            # expert per device and layer, as the shipped model's)
            gate_up, down = self._expert(batch.layer, experts[0])
            x = _gather(batch.hidden, token_index)
            output = expert_ffn(x if x.dtype == gate_up.dtype else x.to(gate_up.dtype), gate_up, down, self.act)
            if output.dtype != batch.hidden.dtype:
                output = output.to(batch.hidden.dtype)
        else:
            by_expert: dict[int, list[int]] = {}  # expert -> its rows
            for row, e in enumerate(experts):
                by_expert.setdefault(e, []).append(row)
            output = batch.hidden.new_empty((expert.numel(), batch.hidden.shape[-1]))
            for e in sorted(by_expert):
                rows = torch.tensor(by_expert[e])
                gate_up, down = self._expert(batch.layer, e)
                x = _gather(batch.hidden, token_index[rows]).to(gate_up.dtype)
                result = expert_ffn(x, gate_up, down, self.act)
                output[rows.to(output.device, non_blocking=True)] = result.to(output.dtype)
        return DeviceResult(batch.device, output, time.perf_counter() - start)

    def _replay(self, layer: int, expert: int, hidden: torch.Tensor) -> torch.Tensor | None:
        """The FFN of one row (1, H) as a graph replay; None where no graph applies (a quantized expert, or a batch
        dtype other than the weights': the eager path converts those)."""
        graph = self._graphs.get((layer, expert))
        if graph is None:
            weights = self.weights.get((layer, expert))
            if weights is None or weights[0].dtype != hidden.dtype:
                return None
            graph = self._graphs[(layer, expert)] = self._capture(weights, hidden)
        elif graph.static_in.dtype != hidden.dtype:
            return None
        graph.static_in.copy_(hidden)
        graph.graph.replay()
        return graph.static_out

    def _capture(self, weights: tuple[torch.Tensor, torch.Tensor], like: torch.Tensor) -> _OneRowGraph:
        """Capture the FFN of a (1, H) input as torch.cuda.graphs documents it: warm-up on a side stream (cuBLAS
        sets up its workspace there), then capture on that stream into the worker's shared memory pool (graphs
        of one worker replay one at a time on one stream, so their temporaries may share memory; each graph's
        output stays allocated as long as the graph is kept). Buffers are made outside inference mode, so later
        calls under `torch.inference_mode` or `torch.no_grad` may both write them."""
        gate_up, down = weights
        device = like.device
        with torch.inference_mode(False), torch.no_grad():
            static_in = torch.empty((1, like.shape[-1]), dtype=like.dtype, device=device)
            static_in.copy_(like)
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    expert_ffn(static_in, gate_up, down, self.act)
            torch.cuda.current_stream(device).wait_stream(side)
            if self._graph_pool is None:
                self._graph_pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._graph_pool, stream=side):
                static_out = expert_ffn(static_in, gate_up, down, self.act)
        return _OneRowGraph(graph, static_in, static_out)


def _gather(hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:  # (n, H), (m,) on the CPU -> (m, H)
    """hidden[rows]. With one distinct token (decode) every row is 0: a view, no kernel and no index upload; with
    rows 0..n-1 in order (one expert's batch: each token once), `hidden` itself.

    Otherwise the row index goes to the GPU with non_blocking=True, which skips the stream synchronization that a
    blocking host-to-device copy makes (the source is pageable, so CUDA stages it before returning: safe)."""
    if hidden.shape[0] == 1:
        return hidden.expand(rows.shape[0], -1)
    if rows.shape[0] == hidden.shape[0] and rows.tolist() == list(range(hidden.shape[0])):
        return hidden
    return hidden[rows.to(hidden.device, non_blocking=True)]
