"""The device side: an expert worker that holds only its own verified shard and runs its experts' FFNs.

A quantized expert (int8 / int4, `wdmoe.model.quantize`) stays quantized in the worker's memory and is dequantized
to the compute dtype each time it runs; a float16-stored one is cast to the compute dtype at load. A batch whose
hidden states are in another dtype than the weights (a pool that loads its shards as stored, a BS cast to another
dtype) is computed in the weights' dtype and answered in the batch's.

On CUDA the worker's `compute_s` is the host time to launch its kernels (they run asynchronously), not their
GPU time; the GPU time of an expert is what `bench/gpu/expert_ffn.py` measures.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers.activations import ACT2FN

from wdmoe.backends.base import DeviceBatch, DeviceResult
from wdmoe.model.expert import expert_ffn
from wdmoe.model.quantize import QUANTIZED_BITS, QuantizedTensor
from wdmoe.model.shards import Manifest


class ExpertWorker:
    """Device `device` of a split: its (layer, expert) weights, loaded after the manifest's checksum matches."""

    def __init__(
        self, root: Path, manifest: Manifest, device: int, torch_device: str = "cpu", dtype: torch.dtype | None = None
    ) -> None:
        """Load device `device`'s shard onto `torch_device`, cast to `dtype` (None: as stored)."""
        self.device = device
        self.act = ACT2FN[manifest.hidden_act]
        self.weights: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.quantized: dict[tuple[int, int], tuple[QuantizedTensor, QuantizedTensor]] = {}
        quantization = manifest.quantization
        self.compute_dtype = dtype or (getattr(torch, quantization.dtype) if quantization else None)
        shard = manifest.device_shard(root, device)
        if shard is None:
            return
        tensors = load_file(str(shard), device=torch_device)
        for layer, expert in manifest.placement.experts_on(device):
            prefix = f"layers.{layer}.experts.{expert}."
            bits = manifest.expert_bits(layer, expert)
            if bits in QUANTIZED_BITS:
                self.quantized[(layer, expert)] = (
                    QuantizedTensor.from_tensors(tensors, prefix + "gate_up_proj", bits),
                    QuantizedTensor.from_tensors(tensors, prefix + "down_proj", bits),
                )
                continue
            gate_up, down = tensors[prefix + "gate_up_proj"], tensors[prefix + "down_proj"]
            cast = dtype or (self.compute_dtype if bits == 16 else None)
            self.weights[(layer, expert)] = (gate_up.to(cast), down.to(cast)) if cast else (gate_up, down)

    @property
    def num_experts_held(self) -> int:
        return len(self.weights) + len(self.quantized)

    @property
    def weight_bytes(self) -> int:
        """Bytes of expert weights this device holds in memory (quantized ones at their stored size)."""
        plain = sum(t.numel() * t.element_size() for pair in self.weights.values() for t in pair)
        return plain + sum(q.nbytes for pair in self.quantized.values() for q in pair)

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
        if expert.numel() == 1 or bool((expert == expert[0]).all()):
            gate_up, down = self._expert(batch.layer, int(expert[0]))
            x = _gather(batch.hidden, token_index).to(gate_up.dtype)
            output = expert_ffn(x, gate_up, down, self.act).to(batch.hidden.dtype)
        else:
            output = batch.hidden.new_empty((expert.numel(), batch.hidden.shape[-1]))
            for e in torch.unique(expert).tolist():
                rows = (expert == e).nonzero().squeeze(1)
                gate_up, down = self._expert(batch.layer, e)
                x = _gather(batch.hidden, token_index[rows]).to(gate_up.dtype)
                result = expert_ffn(x, gate_up, down, self.act)
                output[rows.to(output.device, non_blocking=True)] = result.to(output.dtype)
        return DeviceResult(batch.device, output, time.perf_counter() - start)


def _gather(hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:  # (n, H), (m,) on the CPU -> (m, H)
    """hidden[rows]. With one distinct token (decode) every row is 0: a view, no kernel and no index upload.

    Otherwise the row index goes to the GPU with non_blocking=True, which skips the stream synchronization that a
    blocking host-to-device copy makes (the source is pageable, so CUDA stages it before returning: safe)."""
    if hidden.shape[0] == 1:
        return hidden.expand(rows.shape[0], -1)
    return hidden[rows.to(hidden.device, non_blocking=True)]
