"""Bench (d): a `DeviceProfile` fitted to measured expert-FFN timings (the compute model's calibration).

Reads the JSON of bench/gpu/expert_ffn.py (--timings FILE), or measures afresh when no file is given (or it is
missing), and fits wdmoe.radio.compute.fit_profile to the times of one variant (default: eager, what devices run):

    t(n) = max(n * 6HI / flops_per_s, 3HI * bytes_per_param / mem_bytes_per_s) + overhead_s

It prints the fitted flops_per_s, mem_bytes_per_s and overhead_s, each sample's relative residual
(fit - measured) / measured and their largest magnitude, the fitted figures as fractions of the ceilings measured
in the same run, and the `DeviceProfile(...)` line for wdmoe.radio.compute.PRESETS. Timings with no roofline shape
(noise on a busy CPU) give "profile": null and the reason in "fit_error".

    python bench/gpu/calibrate.py [--timings expert_ffn.json] [--json] [--small]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from expert_ffn import parse_args as ffn_args

from wdmoe.radio.compute import DeviceProfile, fit_profile, roofline_time_s

# Fields a fit cannot give: the radio's power (a UE-class 23 dBm radio, as the presets assume [R]) and the board's
# power draw while computing (H100 SXM's 700 W TDP, NVIDIA datasheet); memory comes from the measured device.
TX_POWER_W = 0.2
COMPUTE_POWER_W = 700.0


def calibrate(timings: dict[str, Any], variant: str, name: str) -> dict[str, Any]:
    """The fitted profile of `variant`'s timings in an expert_ffn result, with its residuals."""
    if variant not in timings["variants"]:
        raise SystemExit(f"--variant {variant!r} has no timings; the file has {timings['variants']}")
    n = np.array([row["tokens"] for row in timings["rows"]], dtype=float)
    measured = np.array([row["time_s"][variant] for row in timings["rows"]], dtype=float)
    flops, weight_bytes = float(timings["flops_per_token"]), float(timings["weight_bytes"])
    template = DeviceProfile(name, 1.0, 1.0, float(timings.get("device_memory_bytes", 0)), TX_POWER_W,
                             COMPUTE_POWER_W)
    try:
        profile = fit_profile(n, measured, flops, weight_bytes, name=name, template=template)
    except ValueError as exc:  # timings with no roofline shape (a noisy CPU): say so instead of inventing a fit
        return {"bench": "calibrate", "device": timings["device"], "dtype": timings["dtype"], "variant": variant,
                "profile": None, "fit_error": str(exc), "tokens": n.astype(int).tolist(),
                "measured_s": measured.tolist()}
    fitted = roofline_time_s(n, flops, weight_bytes, profile.flops_per_s, profile.mem_bytes_per_s,
                             profile.overhead_s)
    residual = (fitted - measured) / measured
    ceilings = timings["ceilings"]
    return {
        "bench": "calibrate",
        "device": timings["device"],
        "dtype": timings["dtype"],
        "variant": variant,
        "fit_error": None,
        "profile": {"name": profile.name, "flops_per_s": profile.flops_per_s,
                    "mem_bytes_per_s": profile.mem_bytes_per_s, "overhead_s": profile.overhead_s,
                    "memory_bytes": profile.memory_bytes},
        "tokens": n.astype(int).tolist(),
        "measured_s": measured.tolist(),
        "fitted_s": fitted.tolist(),
        "rel_residuals": residual.tolist(),
        "max_rel_residual": float(np.abs(residual).max()),
        "flops_fraction_of_matmul_peak": profile.flops_per_s / ceilings["matmul_flops_per_s"],
        "bandwidth_fraction_of_copy": profile.mem_bytes_per_s / ceilings["copy_bytes_per_s"],
        "preset_line": (
            f'"{name}": DeviceProfile("{name}", {profile.flops_per_s:.4g}, {profile.mem_bytes_per_s:.4g}, '
            f"{profile.memory_bytes:.4g}, _UE_TX_POWER_W, {COMPUTE_POWER_W:g}, {profile.overhead_s:.3g}),"
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timings", type=Path, default=None, help="expert_ffn.py --json output; else measure")
    parser.add_argument("--variant", default="eager", help="which variant's timings to fit")
    parser.add_argument("--name", default=None, help="the profile's name (default: from the device's name)")
    parser.add_argument("--small", action="store_true", help="measure at --small sizes (no --timings)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.timings is not None and args.timings.is_file():
        timings, source = json.loads(args.timings.read_text()), str(args.timings)
    else:
        from expert_ffn import measure

        timings = measure(ffn_args(["--variants", args.variant] + (["--small"] if args.small else [])))
        source = "measured now" + ("" if args.timings is None else f" ({args.timings} not found)")
    name = args.name or "-".join(timings["device"].lower().replace("(", " ").replace(")", " ").split()[:3])
    result = {**calibrate(timings, args.variant, name), "source": source}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    p = result["profile"]
    print(f"{result['device']}, {result['dtype']}, variant {args.variant}, timings: {source}")
    if p is None:
        raise SystemExit(f"no fit: {result['fit_error']}")
    print(f"flops_per_s {p['flops_per_s']:.4g} ({result['flops_fraction_of_matmul_peak']:.0%} of the matmul peak), "
          f"mem_bytes_per_s {p['mem_bytes_per_s']:.4g} ({result['bandwidth_fraction_of_copy']:.0%} of the copy), "
          f"overhead_s {p['overhead_s']:.3g}")
    print(f"{'tokens':>6} {'measured us':>12} {'fit us':>10} {'residual':>9}")
    for n, t, f, r in zip(result["tokens"], result["measured_s"], result["fitted_s"], result["rel_residuals"],
                          strict=True):
        print(f"{n:6d} {t * 1e6:12.1f} {f * 1e6:10.1f} {r:+9.1%}")
    print(f"max |relative residual| {result['max_rel_residual']:.1%}")
    print(f"preset: {result['preset_line']}")


if __name__ == "__main__":
    main()
