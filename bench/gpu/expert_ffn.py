"""Bench (a): one routed expert's FFN at Mixtral sizes against its roofline, both ceilings measured in this run.

For n = 1, 2, 4, ..., 512 tokens one expert (hidden H = 4096, intermediate I = 14336, bf16) runs as
    eager      wdmoe.model.expert.expert_ffn, what every device runs: on CUDA, torch's path below 8 tokens, Triton's
               fused gate_up + SiLU kernel from 8 to 128, and cuBLAS gate and up GEMMs plus Triton's silu * up
               above (wdmoe.model.swiglu_triton); then the down GEMM
    torch      expert_ffn_torch, the same without Triton: one fused gate_up GEMM (2I x H), act * up, down; on CUDA
               from 128 tokens (SPLIT_GATE_UP_FROM_ROWS) gate and up as two GEMMs on the halves of gate_up
    separate   gate and up as two GEMMs (Mixtral's original w1 / w3 layout) at every size, act * up, down
    compiled   torch.compile(expert_ffn_torch, dynamic=True): act * up fused into one kernel, the GEMMs as before
and is timed with CUDA events (the median of repeats of back-to-back calls, each after a warm-up; the variants take
turns, so a drift in clocks or temperature hits them alike). Its roofline is

    roofline(n) = max(n * 6HI / peak, 3HI * bytes_per_param / bandwidth)     (wdmoe.radio.compute.roofline_time_s)

with peak = an 8192^3 product in the same dtype, sustained (timed after 2 s of the same product: the GPU's
power-capped clocks, not its first burst; the burst value is reported beside it) and bandwidth = a 2 GiB
device-to-device copy (bytes read + written), both measured in this run; fraction = roofline / measured (1.0 = at
the roofline). Target: >= 0.70 from 64 tokens up. --small shrinks everything (H 256, I 512, n <= 64, CPU, fp32,
no settling) so the script runs in seconds.

    python bench/gpu/expert_ffn.py [--json] [--small]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from ceilings import device_name, measure_ceilings, parse_dtype, pick_device, time_per_call_s
from torch.nn import functional as F

from wdmoe.model.expert import expert_ffn, expert_ffn_torch
from wdmoe.radio.compute import roofline_time_s

TARGET_FRACTION = 0.70
TARGET_FROM_TOKENS = 64
VARIANTS = ("eager", "torch", "separate", "compiled")

Ffn = Callable[[torch.Tensor], torch.Tensor]  # (n, H) -> (n, H)


@dataclass(frozen=True)
class ExpertShape:
    hidden: int
    intermediate: int
    dtype: torch.dtype

    @property
    def flops_per_token(self) -> float:  # three GEMMs of H x I, 2 FLOP per multiply-add
        return 6.0 * self.hidden * self.intermediate

    @property
    def weight_bytes(self) -> float:  # gate, up and down projections
        return 3.0 * self.hidden * self.intermediate * torch.finfo(self.dtype).bits / 8


def make_variants(gate_up: torch.Tensor, down: torch.Tensor, names: list[str]) -> dict[str, Ffn]:
    """The FFN implementations to time, on the same weights: gate_up (2I, H), down (H, I)."""
    inter = down.shape[1]
    gate, up = gate_up[:inter], gate_up[inter:]  # row slices: views, no copy
    found: dict[str, Ffn] = {
        "eager": lambda x: expert_ffn(x, gate_up, down, F.silu),
        "torch": lambda x: expert_ffn_torch(x, gate_up, down, F.silu),
        "separate": lambda x: F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down),
    }
    if "compiled" in names:
        compiled = torch.compile(expert_ffn_torch, dynamic=True)
        found["compiled"] = lambda x: compiled(x, gate_up, down, F.silu)
    return {name: found[name] for name in names}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Ceilings, then each variant at each token count; a variant that fails (e.g. no compiler) is reported."""
    device, dtype = pick_device(args.device, args.small), parse_dtype(args.dtype)
    shape = ExpertShape(args.hidden, args.intermediate, dtype)
    ceilings = measure_ceilings(device, dtype, args.small)
    gen = torch.Generator(device=device).manual_seed(0)
    gate_up = torch.randn(2 * shape.intermediate, shape.hidden, device=device, generator=gen) * shape.hidden**-0.5
    down = torch.randn(shape.hidden, shape.intermediate, device=device, generator=gen) * shape.intermediate**-0.5
    ffns = make_variants(gate_up.to(dtype), down.to(dtype), args.variants)
    tokens = [2**i for i in range(args.max_tokens.bit_length()) if 2**i <= args.max_tokens]
    errors: dict[str, str] = {}
    rel_err: dict[str, float] = {}
    x_check = torch.randn(tokens[-1], shape.hidden, device=device, generator=gen)
    reference = expert_ffn(x_check, gate_up, down, F.silu)  # fp32 weights and inputs
    for name, ffn in list(ffns.items()):
        try:
            out = ffn(x_check.to(dtype)).float()
        except Exception as exc:  # a variant that cannot run here (torch.compile without a compiler) is reported
            errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            del ffns[name]
            continue
        rel_err[name] = float((out - reference).norm() / reference.norm())
    rows = []
    for n in tokens:
        x = torch.randn(n, shape.hidden, device=device, generator=gen).to(dtype)
        roofline = float(roofline_time_s(n, shape.flops_per_token, shape.weight_bytes,
                                         ceilings.matmul_flops_per_s, ceilings.copy_bytes_per_s, 0.0))
        samples: dict[str, list[float]] = {name: [] for name in ffns}
        for _ in range(args.repeats):  # interleaved, so a drift in clocks or temperature hits every variant alike
            for name, ffn in ffns.items():
                samples[name].append(time_per_call_s(partial(ffn, x), device, args.warmup, args.iters, 1))
        times = {name: statistics.median(v) for name, v in samples.items()}
        roofline_cold = float(roofline_time_s(n, shape.flops_per_token, shape.weight_bytes,
                                              ceilings.matmul_flops_per_s_cold or ceilings.matmul_flops_per_s,
                                              ceilings.copy_bytes_per_s, 0.0))
        rows.append({"tokens": n, "roofline_s": roofline, "roofline_cold_s": roofline_cold, "time_s": times,
                     "samples_s": samples,
                     "fraction": {name: roofline / t for name, t in times.items()}})
    judged = [r for r in rows if r["tokens"] >= TARGET_FROM_TOKENS]  # none when --max-tokens < 64: no verdict
    meets = {name: all(r["fraction"][name] >= TARGET_FRACTION for r in judged) if judged else None for name in ffns}
    return {
        "bench": "expert_ffn",
        "device": device_name(device),
        "device_memory_bytes": torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 0,
        "torch": torch.__version__,
        "dtype": args.dtype,
        "hidden": shape.hidden,
        "intermediate": shape.intermediate,
        "flops_per_token": shape.flops_per_token,
        "weight_bytes": shape.weight_bytes,
        "ceilings": ceilings.as_dict(),
        "ridge_tokens": ceilings.matmul_flops_per_s / ceilings.copy_bytes_per_s
        * shape.weight_bytes / shape.flops_per_token,
        "variants": list(ffns),
        "errors": errors,
        "rel_err_vs_fp32": rel_err,
        "rows": rows,
        "target": {"fraction": TARGET_FRACTION, "from_tokens": TARGET_FROM_TOKENS},
        "meets_target": meets,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=14336)
    parser.add_argument("--dtype", default=None, help="fp32, bf16 (default) or fp16; fp32 with --small")
    parser.add_argument("--max-tokens", type=int, default=512, help="token counts 1, 2, 4, ... up to this")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    parser.add_argument("--device", default=None, help="cuda (default) or cpu (default with --small)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls before each timed batch")
    parser.add_argument("--iters", type=int, default=20, help="back-to-back calls per timed batch")
    parser.add_argument("--repeats", type=int, default=7,
                        help="timed batches per variant, the variants interleaved; the median is reported")
    parser.add_argument("--small", action="store_true", help="tiny sizes on the CPU: runs in seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    if unknown := sorted(set(args.variants) - set(VARIANTS)):
        parser.error(f"--variants {unknown}: choose from {', '.join(VARIANTS)}")
    if args.small:
        args.hidden, args.intermediate, args.max_tokens = 256, 512, min(args.max_tokens, 64)
        args.warmup, args.iters, args.repeats = 1, 2, 3
        args.dtype = args.dtype or "fp32"  # CPUs without bf16 units take 100x longer on bf16 products
        if "--variants" not in " ".join(argv or []):
            args.variants = [v for v in args.variants if v != "compiled"]  # inductor's CPU build takes minutes
    args.dtype = args.dtype or "bf16"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = measure(args)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    c = result["ceilings"]
    print(f"{result['device']}, {args.dtype}, H {result['hidden']}, I {result['intermediate']}: matmul peak "
          f"{c['matmul_flops_per_s'] / 1e12:.1f} TFLOP/s sustained ({c['matmul_flops_per_s_cold'] / 1e12:.1f} cold), "
          f"copy {c['copy_bytes_per_s'] / 1e9:.0f} GB/s, "
          f"ridge at {result['ridge_tokens']:.0f} tokens")
    for name, why in result["errors"].items():
        print(f"{name}: did not run ({why})")
    names = result["variants"]
    print(f"{'tokens':>6} {'roofline us':>12} " + " ".join(f"{n + ' us':>12} {'frac':>5}" for n in names))
    for row in result["rows"]:
        cells = " ".join(f"{row['time_s'][n] * 1e6:12.1f} {row['fraction'][n]:5.2f}" for n in names)
        print(f"{row['tokens']:6d} {row['roofline_s'] * 1e6:12.1f} {cells}")
    marks = {None: "-", True: "yes", False: "no"}
    verdict = ", ".join(f"{n}: {marks[ok]}" for n, ok in result["meets_target"].items())
    print(f">= {TARGET_FRACTION:.0%} of roofline from {TARGET_FROM_TOKENS} tokens up: {verdict}")


if __name__ == "__main__":
    main()
