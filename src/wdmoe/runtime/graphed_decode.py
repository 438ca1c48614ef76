"""Greedy decode of one sequence as replays of one CUDA graph per step: the whole BS step, experts included.

    prefill (eager, Runtime.run, telemetry as always) -> first token
    decode step = one graph replay: embed, every layer (attention over a static KV cache, router, the routed
                  experts on the devices' weights with the routing on the GPU: wdmoe.runtime.device_moe), norm,
                  LM head, argmax -> the next step's input; the token and the router outputs into GPU logs

A step of the eager path launches a few hundred kernels from Python and waits for the router's choices once per MoE
layer; at batch 1 the GPU then idles most of the step. Here the host launches one graph per token and reads the
tokens back once, after the last step. What makes the step capturable: transformers' `StaticCache` (fixed
addresses; its write position is a GPU tensor), a 4D boolean attention mask computed on the GPU from the position
(transformers uses a 4D mask as given), position ids as a GPU tensor, and `DeviceMoE` for every MoE layer.

It applies to what the model's own top-k decides (no policy, no air compression, every device live, an in-process
pool, unquantized experts; `DeviceMoE.for_runtime`), batch 1, greedy search without logits processors
(`plain_greedy`); `DistributedMoE.generate` falls back to transformers' `generate` otherwise. An end-of-sequence
token ends the output as transformers' would; the steps after it are computed and dropped (checking for it on the
host each step would cost a synchronization per token).

Telemetry: the prefill's step is recorded by the runtime; each decode step gets a `StepRecord` with one
`LayerRecord` per MoE layer, built after the generation from the GPU logs of the router's choices: what went to
which device and the bits on the air, as the runtime records them; the measured times of a step are its share of
the decode's wall time (no per-layer or per-device times: nothing returns to the host in between).
On the CPU (tests) the same steps run eagerly, without a graph.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

import numpy as np
import torch

from wdmoe.runtime.device_moe import DeviceMoE
from wdmoe.runtime.layer_step import Runtime
from wdmoe.runtime.telemetry import LayerRecord

WARMUP_STEPS = 3  # eager steps before the capture (Triton compiles, cuBLAS sets up its workspace on that stream)
CACHE_BUCKET = 256  # the static cache's length is rounded up to a multiple of this (one graph serves many lengths)
_NEUTRAL = {"num_beams": 1, "num_beam_groups": 1, "penalty_alpha": None, "repetition_penalty": 1.0,
            "no_repeat_ngram_size": 0, "bad_words_ids": None, "suppress_tokens": None,
            "begin_suppress_tokens": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
            "sequence_bias": None, "max_time": None, "stop_strings": None, "encoder_repetition_penalty": 1.0,
            "exponential_decay_length_penalty": None, "min_length": 0, "guidance_scale": None,
            "assistant_model": None, "prompt_lookup_num_tokens": None, "num_return_sequences": 1}


def plain_greedy(generation_config: Any, kwargs: dict[str, Any]) -> tuple[int, list[int]] | None:
    """(max_new_tokens, end-of-sequence ids) when `generate(**kwargs)` under `generation_config` is greedy search
    with nothing but a length limit; None otherwise (transformers' generate must run it)."""
    allowed = {"max_new_tokens", "min_new_tokens", "do_sample", "pad_token_id", "attention_mask"}
    if set(kwargs) - allowed or kwargs.get("max_new_tokens") is None:
        return None
    do_sample = kwargs.get("do_sample", getattr(generation_config, "do_sample", False))
    if do_sample or any(getattr(generation_config, name, v) not in (v, None) for name, v in _NEUTRAL.items()):
        return None
    eos = getattr(generation_config, "eos_token_id", None)
    eos_ids = [] if eos is None else [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]
    if eos_ids and (kwargs.get("min_new_tokens") or getattr(generation_config, "min_new_tokens", None)):
        return None  # suppressing end-of-sequence until a minimum is a logits processor
    return int(kwargs["max_new_tokens"]), eos_ids


class GraphedDecoder:
    """Static KV cache, the static inputs of a decode step, its CUDA graph, and the GPU logs (module docstring)."""

    def __init__(self, hf_model: Any, runtime: Runtime, moe: DeviceMoE, max_len: int, capture: bool,
                 compile_step: bool = False) -> None:
        from transformers import StaticCache

        self.hf_model, self.runtime, self.moe, self.max_len = hf_model, runtime, moe, max_len
        self.pool, self.routing = runtime.pool, runtime.routing  # the graph holds their weights' addresses
        self.capture = capture
        device = hf_model.device
        self.cache = StaticCache(config=hf_model.config, max_cache_len=max_len)
        # transformers 5.24 renamed the forward's `past_key_values` to `cache`
        self.cache_kw = "cache" if "cache" in inspect.signature(hf_model.forward).parameters else "past_key_values"
        self.layers = sorted(runtime.routing.primary)
        num_layers, k = len(self.layers), int(hf_model.config.num_experts_per_tok)
        experts = runtime.placement.num_experts
        with torch.inference_mode(False), torch.no_grad():  # plain tensors: written under either mode later
            self.ids = torch.zeros((1, 1), dtype=torch.long, device=device)
            self.pos = torch.zeros((1, 1), dtype=torch.long, device=device)
            self.step = torch.zeros((1,), dtype=torch.long, device=device)
            self.positions = torch.arange(max_len, device=device)
            self.mask = torch.zeros((1, 1, 1, max_len), dtype=torch.bool, device=device)
            self.tokens = torch.zeros((1, max_len), dtype=torch.long, device=device)
            self.index_log = torch.zeros((max_len, num_layers, k), dtype=torch.long, device=device)
            self.weight_log = torch.zeros((max_len, num_layers, k), dtype=torch.float32, device=device)
            self.logits_log = torch.zeros((max_len, num_layers, experts), dtype=torch.float32, device=device)
        # torch.compile fuses the BS's small kernels (norms, rotary, softmax) inside the graph; the routed experts
        # stay DeviceMoE's kernels (a graph break). Compiling costs about a minute at the first request.
        self.compiled = compile_step
        self.forward = torch.compile(hf_model.forward, dynamic=False) if compile_step else hf_model.forward
        self.graph: torch.cuda.CUDAGraph | None = None
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def fits(self, runtime: Runtime, length: int) -> bool:
        """Whether this decoder still serves `runtime` (same pool and routing, still nothing for the host to decide)
        for `length` positions."""
        plain = runtime.decider is None and runtime.air is None and not runtime.dead
        return plain and runtime.pool is self.pool and runtime.routing is self.routing and length <= self.max_len

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, eos_ids: list[int]) -> torch.Tensor:
        """(1, P) on the model's device -> (1, P + n): the prompt and the greedy tokens (module docstring)."""
        prompt_len = input_ids.shape[1]
        if self.cache.is_initialized:
            self.cache.reset()  # in place: the graph keeps the cache's addresses
        mask = (self.positions[None, :] <= torch.arange(prompt_len, device=input_ids.device)[:, None])[None, None]
        positions = self.positions[:prompt_len][None]
        out = self.hf_model(input_ids=input_ids, position_ids=positions, attention_mask=mask, use_cache=True,
                            logits_to_keep=1, **{self.cache_kw: self.cache})  # eager, recorded by the runtime
        self.ids.copy_(out.logits[:, -1].argmax(-1, keepdim=True))
        self.tokens[:, :1].copy_(self.ids)
        self.pos.fill_(prompt_len)
        self.step.fill_(1)
        start = time.perf_counter()
        self.runtime.device_step = self.moe.run
        try:
            for i in range(1, max_new_tokens):
                self._advance(i)
        finally:
            self.runtime.device_step = None
        new = self.tokens[:, :max_new_tokens].clone()
        steps = self._read_logs(max_new_tokens)  # the one synchronization of the decode
        self._record(steps, (time.perf_counter() - start) / max(len(steps), 1))
        kept = _until_eos(new[0].tolist(), eos_ids)
        return torch.cat([input_ids, new[:, :kept]], dim=1)

    def _advance(self, i: int) -> None:
        if self.graph is not None:
            self.graph.replay()
        elif self.stream is None or not self.capture:
            self._step()
        elif i <= WARMUP_STEPS:
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                self._step()
            torch.cuda.current_stream().wait_stream(self.stream)
        else:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.stream):
                self._step()
            self.graph = graph
            graph.replay()

    def _step(self) -> None:
        """One decode step from the static inputs to the next ones; every shape and address fixed."""
        self.mask.copy_((self.positions <= self.pos[0]).view(1, 1, 1, -1))
        out = self.forward(input_ids=self.ids, position_ids=self.pos, attention_mask=self.mask,
                                    use_cache=True, **{self.cache_kw: self.cache})
        following = out.logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
        self.ids.copy_(following)
        self.pos.add_(1)
        self.tokens.index_copy_(1, self.step, following)
        last = [self.moe.last[layer] for layer in self.layers]
        self.index_log.index_copy_(0, self.step, torch.stack([idx[0] for idx, _, _ in last])[None])
        self.weight_log.index_copy_(0, self.step, torch.stack([w[0].float() for _, w, _ in last])[None])
        logits = [lg[0].float() for _, _, lg in last if lg is not None]
        if len(logits) == len(last):
            self.logits_log.index_copy_(0, self.step, torch.stack(logits)[None])
        self.step.add_(1)

    def _read_logs(self, steps: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        index = self.index_log[1:steps].cpu().numpy()
        weight = self.weight_log[1:steps].cpu().numpy()
        logits = self.logits_log[1:steps].cpu().numpy()
        return [(index[s], weight[s], logits[s]) for s in range(steps - 1)]

    def _record(self, steps: list[tuple[np.ndarray, np.ndarray, np.ndarray]], step_s: float) -> None:
        runtime = self.runtime
        hidden = torch.empty((1, int(self.hf_model.config.hidden_size)), dtype=self.hf_model.dtype, device="meta")
        bits = runtime.bits_per_token(hidden)
        devices = runtime.placement.num_devices
        index = np.stack([s[0] for s in steps]) if steps else np.zeros((0, len(self.layers), 1), dtype=np.int64)
        # (steps, layers, D): assignments of each step and layer per device, for every step at once
        where = np.stack([np.asarray(self.routing.primary[layer])[index[:, slot]]
                          for slot, layer in enumerate(self.layers)], axis=1)  # (steps, layers, k)
        assignments = (where[..., None] == np.arange(devices)).sum(axis=2).astype(np.int64)
        tokens_down = (assignments > 0).astype(np.int64)
        keep, idle = np.ones((1, index.shape[-1]), dtype=bool), np.zeros(devices)
        for s, (idx, weight, logits) in enumerate(steps):
            runtime.telemetry.start("decode", 1)
            for slot, layer in enumerate(self.layers):
                runtime.telemetry.add(LayerRecord(
                    layer=layer, topk_index=idx[slot][None], topk_weight=weight[slot][None], keep=keep,
                    weight=weight[slot][None], logits=logits[slot][None] if runtime.record_logits else None,
                    tokens_down=tokens_down[s, slot], assignments=assignments[s, slot],
                    bits_down=tokens_down[s, slot] * bits, bits_up=assignments[s, slot] * bits, bs_time_s=0.0,
                    device_time_s=idle, dispatch_time_s=0.0))
            runtime.telemetry.finish(step_s, 0.0)


def cache_length(prompt_len: int, max_new_tokens: int) -> int:
    return -(-(prompt_len + max_new_tokens) // CACHE_BUCKET) * CACHE_BUCKET


def _until_eos(tokens: list[int], eos_ids: list[int]) -> int:
    """How many of `tokens` transformers would return: up to and including the first end-of-sequence token."""
    for n, token in enumerate(tokens):
        if token in eos_ids:
            return n + 1
    return len(tokens)
