"""The device side: an expert worker that holds only its own verified shard and runs its experts' FFNs."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers.activations import ACT2FN

from wdmoe.backends.base import DeviceBatch, DeviceResult
from wdmoe.model.expert import expert_ffn
from wdmoe.model.shards import Manifest


class ExpertWorker:
    """Device `device` of a split: its (layer, expert) weights, loaded after the manifest's checksum matches."""

    def __init__(self, root: Path, manifest: Manifest, device: int, torch_device: str = "cpu") -> None:
        self.device = device
        self.act = ACT2FN[manifest.hidden_act]
        self.weights: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        shard = manifest.device_shard(root, device)
        if shard is None:
            return
        tensors = load_file(str(shard), device=torch_device)
        for layer, expert in manifest.placement.experts_on(device):
            prefix = f"layers.{layer}.experts.{expert}."
            self.weights[(layer, expert)] = (tensors[prefix + "gate_up_proj"], tensors[prefix + "down_proj"])

    @property
    def num_experts_held(self) -> int:
        return len(self.weights)

    def run(self, batch: DeviceBatch) -> DeviceResult:
        start = time.perf_counter()
        token_index, expert = batch.token_index, batch.expert
        if expert.numel() == 1 or bool((expert == expert[0]).all()):
            gate_up, down = self.weights[(batch.layer, int(expert[0]))]
            output = expert_ffn(batch.hidden[token_index], gate_up, down, self.act)
        else:
            output = batch.hidden.new_empty((expert.numel(), batch.hidden.shape[-1]))
            for e in torch.unique(expert).tolist():
                rows = (expert == e).nonzero().squeeze(1)
                gate_up, down = self.weights[(batch.layer, e)]
                output[rows] = expert_ffn(batch.hidden[token_index[rows]], gate_up, down, self.act)
        return DeviceResult(batch.device, output, time.perf_counter() - start)
