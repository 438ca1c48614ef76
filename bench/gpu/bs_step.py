"""Bench (b): the BS step of one MoE layer at Mixtral sizes: RMSNorm, attention with KV cache, residual, RMSNorm,
router (what the BS computes between two dispatches to the devices), with transformers' own Mixtral modules.

Cases: decode (1 token) against a KV cache of 512 and 2048 tokens, and prefill (512 tokens, causal). Each is
timed with CUDA events (warm-up, median of repeats); a decode step appends to the cache as `generate` does and the
cache is cropped back after each call, so every call sees the same context. `decode graph`: the same decode step
as the graphed decode runs it (wdmoe.runtime.graphed_decode): a static KV cache, a 4D mask, replayed from a CUDA
graph (on the CPU, without a graph: `decode static`); on CUDA also `decode graph compiled`: the step through
torch.compile first (its small kernels fused), as `DistributedMoE.compile_decode` runs it. The roofline is
max(FLOPs / matmul peak, bytes / copy bandwidth), both ceilings measured in this run, with bytes = the layer's
attention, norm and router weights plus the KV cache read once.

    python bench/gpu/bs_step.py [--json] [--small]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import torch
from ceilings import Ceilings, device_name, measure_ceilings, parse_dtype, pick_device, time_per_call_s
from transformers import DynamicCache, MixtralConfig, StaticCache
from transformers.models.mixtral.modeling_mixtral import (
    MixtralAttention,
    MixtralRMSNorm,
    MixtralRotaryEmbedding,
    MixtralTopKRouter,
)


class BSStep(torch.nn.Module):
    """One decoder layer's BS part: the layer's forward up to and including the router (no experts)."""

    def __init__(self, config: MixtralConfig) -> None:
        super().__init__()
        self.input_layernorm = MixtralRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = MixtralAttention(config, layer_idx=0)
        self.post_attention_layernorm = MixtralRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gate = MixtralTopKRouter(config)
        torch.nn.init.normal_(self.gate.weight, std=config.initializer_range)  # the router is created empty

    def forward(
        self, hidden: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
        cache: DynamicCache | StaticCache, mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # (1, T, H) -> (1, T, H), (T, k) weights, (T, k) index
        # the cache goes by position: its keyword is `past_key_values` up to transformers 5.23, `cache` from 5.24
        attn, _ = self.self_attn(self.input_layernorm(hidden), position_embeddings, mask, cache)
        hidden = hidden + attn
        _, weights, index = self.gate(self.post_attention_layernorm(hidden))
        return hidden, weights, index


def step_cost(config: MixtralConfig, tokens: int, context: int, bytes_per_param: int) -> tuple[float, float]:
    """(FLOPs, bytes) of one BS step over `tokens` new tokens that attend to `context` cached ones (causally)."""
    hidden, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    head_dim = hidden // heads
    params = 2 * hidden * hidden + 2 * hidden * kv_heads * head_dim + config.num_local_experts * hidden + 2 * hidden
    attended = tokens * context + tokens * (tokens + 1) / 2  # query-key pairs, causal within the new tokens
    flops = 2.0 * tokens * params + 4.0 * attended * heads * head_dim  # QK^T and PV
    kv_bytes = 2.0 * (context + tokens) * kv_heads * head_dim * bytes_per_param
    return flops, params * bytes_per_param + kv_bytes


def time_case(step: BSStep, config: MixtralConfig, tokens: int, context: int, args: argparse.Namespace,
              device: torch.device, dtype: torch.dtype) -> float:
    """Median seconds of one BS step of `tokens` new tokens after `context` cached ones."""
    gen = torch.Generator(device=device).manual_seed(context + tokens)
    head_dim = config.hidden_size // config.num_attention_heads
    cache = DynamicCache(config=config)
    if context:
        kv_shape = (1, config.num_key_value_heads, context, head_dim)
        keys, values = (torch.randn(kv_shape, device=device, generator=gen, dtype=dtype) for _ in range(2))
        cache.update(keys, values, 0)
    hidden = torch.randn(1, tokens, config.hidden_size, device=device, generator=gen, dtype=dtype)
    positions = torch.arange(context, context + tokens, device=device)[None]
    position_embeddings = MixtralRotaryEmbedding(config).to(device)(hidden, positions)

    def call() -> None:
        if context:
            step(hidden, position_embeddings, cache)
            cache.crop(-tokens)  # a view: the next call sees the same context
        else:
            step(hidden, position_embeddings, DynamicCache(config=config))

    return time_per_call_s(call, device, args.warmup, args.iters, args.repeats)


def time_graphed_decode(step: BSStep, config: MixtralConfig, context: int, args: argparse.Namespace,
                        device: torch.device, dtype: torch.dtype, compiled: bool = False) -> float:
    """Median seconds of one decode step over a static cache of `context` tokens, replayed from a CUDA graph (the
    CPU runs it eagerly); the cache's write position is moved back after each step, so each sees the same context.
    `compiled`: the step through torch.compile first (fused small kernels), as `DistributedMoE.compile_decode`."""
    gen = torch.Generator(device=device).manual_seed(context)
    head_dim = config.hidden_size // config.num_attention_heads
    cache = StaticCache(config=config, max_cache_len=context + 64)
    kv_shape = (1, config.num_key_value_heads, context, head_dim)
    cache.update(*(torch.randn(kv_shape, device=device, generator=gen, dtype=dtype) for _ in range(2)), 0)
    hidden = torch.randn(1, 1, config.hidden_size, device=device, generator=gen, dtype=dtype)
    position_embeddings = MixtralRotaryEmbedding(config).to(device)(hidden, torch.tensor([[context]], device=device))
    mask = (torch.arange(context + 64, device=device) <= context).view(1, 1, 1, -1)

    run = torch.compile(step, dynamic=False) if compiled else step

    def call() -> None:
        run(hidden, position_embeddings, cache, mask)
        cache.layers[0].cumulative_length.sub_(1)

    if device.type != "cuda":
        return time_per_call_s(call, device, args.warmup, args.iters, args.repeats)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            call()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        call()
    return time_per_call_s(graph.replay, device, args.warmup, args.iters, args.repeats)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    device, dtype = pick_device(args.device, args.small), parse_dtype(args.dtype)
    config = MixtralConfig(
        hidden_size=args.hidden, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        num_local_experts=args.experts, num_experts_per_tok=2, num_hidden_layers=1, intermediate_size=4 * args.hidden,
        max_position_embeddings=max(args.contexts) + args.prefill + 64,
    )
    config._attn_implementation = "sdpa"  # what from_config picks on GPUs and CPUs alike
    torch.manual_seed(0)
    with torch.device(device):
        step = BSStep(config).to(dtype).eval()
    ceilings = measure_ceilings(device, dtype, args.small)
    cases = [("decode", 1, c) for c in args.contexts] + [("prefill", args.prefill, 0)]
    rows = []
    with torch.inference_mode():
        for phase, tokens, context in cases:
            seconds = time_case(step, config, tokens, context, args, device, dtype)
            rows.append(_row(phase, tokens, context, seconds, config, dtype, ceilings))
        name = "decode graph" if device.type == "cuda" else "decode static"
        for context in args.contexts:
            seconds = time_graphed_decode(step, config, context, args, device, dtype)
            rows.append(_row(name, 1, context, seconds, config, dtype, ceilings))
        for context in args.contexts if device.type == "cuda" else ():
            seconds = time_graphed_decode(step, config, context, args, device, dtype, compiled=True)
            rows.append(_row(f"{name} compiled", 1, context, seconds, config, dtype, ceilings))
    return {
        "bench": "bs_step",
        "device": device_name(device),
        "torch": torch.__version__,
        "dtype": args.dtype,
        "hidden": args.hidden,
        "heads": args.heads,
        "kv_heads": args.kv_heads,
        "experts": args.experts,
        "attention": config._attn_implementation,
        "ceilings": ceilings.as_dict(),
        "rows": rows,
    }


def _row(phase: str, tokens: int, context: int, seconds: float, config: MixtralConfig, dtype: torch.dtype,
         ceilings: Ceilings) -> dict[str, Any]:
    flops, nbytes = step_cost(config, tokens, context, torch.finfo(dtype).bits // 8)
    roofline = max(flops / ceilings.matmul_flops_per_s, nbytes / ceilings.copy_bytes_per_s)
    return {"phase": phase, "tokens": tokens, "context": context, "time_s": seconds,
            "tokens_per_s": tokens / seconds, "flops": flops, "bytes": nbytes, "roofline_s": roofline,
            "fraction": roofline / seconds}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--contexts", default="512,2048", help="decode KV-cache lengths, comma-separated")
    parser.add_argument("--prefill", type=int, default=512, help="prefill prompt length")
    parser.add_argument("--dtype", default=None, help="fp32, bf16 (default) or fp16; fp32 with --small")
    parser.add_argument("--device", default=None, help="cuda (default) or cpu (default with --small)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--small", action="store_true", help="tiny sizes on the CPU: runs in seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    args.contexts = [int(c) for c in args.contexts.split(",") if c]
    if args.small:
        args.hidden, args.heads, args.kv_heads, args.contexts, args.prefill = 64, 4, 2, [16, 64], 32
        args.warmup, args.iters, args.repeats, args.dtype = 1, 3, 3, args.dtype or "fp32"
    args.dtype = args.dtype or "bf16"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = measure(args)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    c: Callable[[str], float] = result["ceilings"].__getitem__
    print(f"{result['device']}, {args.dtype}, hidden {args.hidden}, {args.heads} heads / {args.kv_heads} KV heads, "
          f"{result['attention']}; peak {c('matmul_flops_per_s') / 1e12:.3g} TFLOP/s, "
          f"copy {c('copy_bytes_per_s') / 1e9:.4g} GB/s")
    print(f"{'phase':8s} {'tokens':>6} {'context':>7} {'time us':>10} {'roofline us':>12} {'frac':>5}")
    for r in result["rows"]:
        print(f"{r['phase']:8s} {r['tokens']:6d} {r['context']:7d} {r['time_s'] * 1e6:10.1f} "
              f"{r['roofline_s'] * 1e6:12.1f} {r['fraction']:5.2f}")


if __name__ == "__main__":
    main()
