"""The two ceilings of the machine a GPU bench runs on, measured in that same run, and a timer for device work.

    peak = matmul_peak_flops_per_s(device, dtype, n)   # an n x n x n product: 2 n^3 FLOP over its median time
    bw = copy_bandwidth_bytes_per_s(device, nbytes)      # a device-to-device copy: bytes read + bytes written
    t = time_per_call_s(fn, device, warmup=5, iters=20, repeats=7)

Device work is asynchronous, so on CUDA the timer records events around `iters` back-to-back calls and takes the
median over `repeats` such batches (per call); on the CPU it reads `time.perf_counter` the same way. Inputs are
random, never zeros (a product on zeros runs faster than on real data).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from wdmoe.errors import WdmoeError
from wdmoe.runtime.loading import DTYPES, check_torch_device


@dataclass(frozen=True)
class Ceilings:
    """matmul_flops_per_s: dense FLOP/s of one large product in the bench's dtype, sustained: timed after the
    product has run for settle_s seconds, at the clocks the card's power cap allows for long work (short bursts
    spread more: on the H100 the first 150 ms gave 681-758 TFLOP/s over 20 runs, the value after 2 s 680-700 in
    three); matmul_flops_per_s_cold: the same product timed first, before settling (reported, not used);
    copy_bytes_per_s: bytes read plus bytes written per second by a large device-to-device copy; the sizes say
    what was measured."""

    matmul_flops_per_s: float
    copy_bytes_per_s: float
    matmul_n: int
    copy_bytes: int
    matmul_flops_per_s_cold: float | None = None
    settle_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pick_device(requested: str | None, small: bool) -> torch.device:
    """The device a bench runs on: `requested`, else the CPU for --small runs and CUDA otherwise (refused clearly
    by wdmoe when torch sees no GPU)."""
    name = requested or ("cpu" if small else "cuda")
    try:
        return torch.device(check_torch_device(name, "--device"))
    except WdmoeError as exc:
        raise SystemExit(f"error: {exc}") from exc


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise SystemExit(f"--dtype {name!r} is unknown; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_call_s(
    fn: Callable[[], object], device: torch.device, warmup: int = 3, iters: int = 10, repeats: int = 5
) -> float:
    """Median over `repeats` batches of the mean seconds per call of `iters` back-to-back calls of `fn`."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3 / iters)
        else:
            begin = time.perf_counter()
            for _ in range(iters):
                fn()
            samples.append((time.perf_counter() - begin) / iters)
    return statistics.median(samples)


def wall_s(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call of `fn`, its device work included."""
    synchronize(device)
    begin = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - begin


def run_for_s(fn: Callable[[], object], device: torch.device, seconds: float) -> None:
    """Call `fn` back to back for about `seconds` of wall time (device work included)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(5):
            fn()
        synchronize(device)


def matmul_peak_flops_per_s(
    device: torch.device, dtype: torch.dtype, n: int, iters: int = 10, settle_s: float = 0.0
) -> float:
    """2 n^3 / t of an (n, n) x (n, n) product of random values in `dtype`, timed after `settle_s` seconds of the
    same product."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    out = torch.empty(n, n, device=device, dtype=dtype)
    run_for_s(lambda: torch.mm(a, b, out=out), device, settle_s)
    seconds = time_per_call_s(lambda: torch.mm(a, b, out=out), device, warmup=3, iters=iters, repeats=5)
    return 2.0 * n**3 / seconds


def copy_bandwidth_bytes_per_s(device: torch.device, nbytes: int, iters: int = 10) -> float:
    """(bytes read + bytes written) / t of copying a random `nbytes` buffer into another on the same device."""
    numel = nbytes // 2
    src = torch.randn(numel, device=device, dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    seconds = time_per_call_s(lambda: dst.copy_(src), device, warmup=3, iters=iters, repeats=5)
    return 2.0 * numel * 2 / seconds


SETTLE_S = 2.0  # seconds of the product before the sustained peak is timed (CUDA, full-size runs)


def measure_ceilings(device: torch.device, dtype: torch.dtype, small: bool) -> Ceilings:
    """Both ceilings; --small sizes (a 256-cube product, a 16 MiB copy, no settling) keep a CPU run to a fraction
    of a second."""
    matmul_n, copy_bytes = (256, 16 << 20) if small else (8192, 2 << 30)
    iters = 3 if small else 20
    settle_s = 0.0 if small or device.type != "cuda" else SETTLE_S
    cold = matmul_peak_flops_per_s(device, dtype, matmul_n, iters=iters)
    sustained = matmul_peak_flops_per_s(device, dtype, matmul_n, iters=iters, settle_s=settle_s) if settle_s else cold
    return Ceilings(
        sustained,
        copy_bandwidth_bytes_per_s(device, copy_bytes, iters=iters),
        matmul_n,
        copy_bytes,
        matmul_flops_per_s_cold=cold,
        settle_s=settle_s,
    )
