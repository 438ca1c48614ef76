"""Radio stage 3: what a device can compute, and how long one expert takes on it (pure numpy).

Contract: a `DeviceProfile` describes one device; `DeviceProfiles` holds D of them as arrays of shape (D,);
`roofline_time_s` gives the seconds one expert FFN takes on n tokens, vectorized over devices:

    t(n) = max(n * flops_per_token / flops_per_s, weight_bytes / mem_bytes_per_s) + overhead_s,   t(0) = 0

(papers.md §2.2 computes n * F / (eta * C) [R]; the memory term is our [R] addition, since decode with one token
is bound by streaming the expert's weights, not by FLOPs). `fit_profile` recovers the effective numbers from
measured timings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_UE_TX_POWER_W = 0.2  # 23 dBm, 3GPP power class 3 UE maximum output power (TS 38.101-1)
FLOPS_PER_WEIGHT = 2.0  # one multiply and one add per weight per token: a dense layer's matmul


def dense_flops_per_token(params: float) -> float:
    """FLOPs of `params` dense weights on one token, 2 per weight (attention over the context left out) [R]."""
    return FLOPS_PER_WEIGHT * params


@dataclass(frozen=True)
class DeviceProfile:
    """One device's compute and power figures.

    Attributes:
        name: a label, e.g. the preset key.
        flops_per_s: effective dense FLOP/s for the expert FFN's matmuls.
        mem_bytes_per_s: effective memory bandwidth in bytes/s (weight streaming).
        memory_bytes: memory available for expert weights, in bytes.
        tx_power_w: radio transmit power in W (uplink energy).
        compute_power_w: power drawn while computing, in W (compute energy).
        overhead_s: fixed per-expert-call overhead (kernel launches, scheduling), in seconds.
    """

    name: str
    flops_per_s: float
    mem_bytes_per_s: float
    memory_bytes: float
    tx_power_w: float
    compute_power_w: float
    overhead_s: float = 0.0

    def __post_init__(self) -> None:
        for field in ("flops_per_s", "mem_bytes_per_s"):
            if not getattr(self, field) > 0.0:
                raise ValueError(f"DeviceProfile {self.name!r}: {field} = {getattr(self, field)} must be > 0")
        for field in ("memory_bytes", "tx_power_w", "compute_power_w", "overhead_s"):
            if getattr(self, field) < 0.0:
                raise ValueError(f"DeviceProfile {self.name!r}: {field} = {getattr(self, field)} must be >= 0")


@dataclass(frozen=True)
class DeviceProfiles:
    """D device profiles as a struct of arrays, each of shape (D,)."""

    names: tuple[str, ...]
    flops_per_s: np.ndarray
    mem_bytes_per_s: np.ndarray
    memory_bytes: np.ndarray
    tx_power_w: np.ndarray
    compute_power_w: np.ndarray
    overhead_s: np.ndarray

    @classmethod
    def from_profiles(cls, profiles: Sequence[DeviceProfile]) -> DeviceProfiles:
        if len(profiles) == 0:
            raise ValueError("DeviceProfiles needs at least one DeviceProfile")

        def column(field: str) -> np.ndarray:
            return np.array([getattr(p, field) for p in profiles], dtype=float)

        return cls(
            names=tuple(p.name for p in profiles),
            flops_per_s=column("flops_per_s"),
            mem_bytes_per_s=column("mem_bytes_per_s"),
            memory_bytes=column("memory_bytes"),
            tx_power_w=column("tx_power_w"),
            compute_power_w=column("compute_power_w"),
            overhead_s=column("overhead_s"),
        )

    @classmethod
    def uniform(cls, profile: DeviceProfile, num_devices: int) -> DeviceProfiles:
        return cls.from_profiles([profile] * num_devices)

    @property
    def num_devices(self) -> int:
        return len(self.names)

    def __getitem__(self, k: int) -> DeviceProfile:
        return DeviceProfile(self.names[k], float(self.flops_per_s[k]), float(self.mem_bytes_per_s[k]),
                             float(self.memory_bytes[k]), float(self.tx_power_w[k]),
                             float(self.compute_power_w[k]), float(self.overhead_s[k]))


def roofline_time_s(n_tokens: np.ndarray | float, flops_per_token: float, weight_bytes: float | np.ndarray,
                    flops_per_s: np.ndarray | float, mem_bytes_per_s: np.ndarray | float,
                    overhead_s: np.ndarray | float) -> np.ndarray:
    """Seconds for one expert on n tokens: max(n*F/C, W/M) + overhead, and 0 where n == 0. Broadcasts."""
    n = np.asarray(n_tokens, dtype=float)
    t = np.maximum(n * (flops_per_token / np.asarray(flops_per_s)), weight_bytes / np.asarray(mem_bytes_per_s))
    return np.where(n > 0.0, t + overhead_s, 0.0)


def roofline_one_token_s(flops_per_token: float, weight_bytes: float, flops_per_s: float, mem_bytes_per_s: float,
                         overhead_s: float) -> float:
    """`roofline_time_s` for one token on Python floats (the decode solvers' form): max(F/C, W/M) + overhead,
    the same bits as the array form at n = 1."""
    return max(flops_per_token / flops_per_s, weight_bytes / mem_bytes_per_s) + overhead_s


def expert_time_s(n_tokens: np.ndarray, profiles: DeviceProfiles, flops_per_token: float,
                  weight_bytes: float) -> np.ndarray:
    """`roofline_time_s` with each device's own profile; n_tokens has shape (D,) or (..., D)."""
    return roofline_time_s(n_tokens, flops_per_token, weight_bytes, profiles.flops_per_s,
                           profiles.mem_bytes_per_s, profiles.overhead_s)


def fit_profile(n_tokens: np.ndarray, measured_s: np.ndarray, flops_per_token: float, weight_bytes: float,
                name: str = "fitted", template: DeviceProfile | None = None) -> DeviceProfile:
    """Fit effective flops_per_s, mem_bytes_per_s and overhead_s to measured expert timings.

    The roofline t(n) = max(a*n, m) + o (a = F/C, m = W/M) is linear once we know which samples are
    memory-bound: for every split of the sorted distinct n into a memory-bound prefix (>= 1 distinct n) and a
    compute-bound suffix (>= 2 distinct n), solve the 3-parameter linear least squares, then keep the split whose
    parameters give the smallest squared error under the true max() model. Power, memory and tx figures come
    from `template` (zeros without one). Samples with n <= 0 are ignored.
    """
    n = np.asarray(n_tokens, dtype=float).ravel()
    t = np.asarray(measured_s, dtype=float).ravel()
    if n.shape != t.shape:
        raise ValueError(f"n_tokens has {n.size} samples, measured_s has {t.size}; give one time per sample")
    use = n > 0.0
    n, t = n[use], t[use]
    distinct = np.unique(n)
    if distinct.size < 3:
        raise ValueError(f"fit_profile needs timings at >= 3 distinct token counts, got {distinct.size}: "
                         "measure small n (memory-bound) and large n (compute-bound)")
    best: tuple[float, float, float, float] | None = None
    for split in range(1, distinct.size - 1):
        memory_bound = n <= distinct[split - 1]
        # columns: a (slope, compute-bound rows), m (floor, memory-bound rows), o (every row)
        design = np.stack([np.where(memory_bound, 0.0, n), memory_bound.astype(float), np.ones_like(n)], axis=1)
        (a, m, o), *_ = np.linalg.lstsq(design, t, rcond=None)
        if a <= 0.0 or m <= 0.0:
            continue
        o = max(o, 0.0)
        sse = float(np.sum((np.maximum(a * n, m) + o - t) ** 2))
        if best is None or sse < best[0]:
            best = (sse, float(a), float(m), float(o))
    if best is None:
        raise ValueError("fit_profile found no split of the timings into a memory-bound and a compute-bound "
                         "regime with positive slope and floor; check the measurements")
    _, a, m, o = best
    base = template or DeviceProfile(name, 1.0, 1.0, 0.0, 0.0, 0.0)
    return DeviceProfile(name, flops_per_token / a, weight_bytes / m, base.memory_bytes, base.tx_power_w,
                         base.compute_power_w, o)


# Presets. Datasheet figures are NVIDIA's / vendors' published module specs; everything marked [R] is our
# estimate and should be replaced by `fit_profile` on measured timings before any claim about a real device.
PRESETS: dict[str, DeviceProfile] = {
    # Jetson AGX Orin 64GB datasheet: GPU 170 sparse INT8 TOPS, LPDDR5 204.8 GB/s, 64 GB, module 15-60 W.
    # flops_per_s: dense FP16 tensor = 170/2 (sparsity) /2 (INT8->FP16) = 42.5e12 [R]; overhead 50 us [R].
    "jetson-agx-orin": DeviceProfile("jetson-agx-orin", 42.5e12, 204.8e9, 64e9, _UE_TX_POWER_W, 60.0, 50e-6),
    # Jetson Orin NX 16GB datasheet: 100 TOPS (sparse INT8, GPU + DLA), LPDDR5 102.4 GB/s, 16 GB, 10-25 W.
    # flops_per_s: GPU share of the TOPS, dense FP16 ~ 15e12 [R]; overhead 60 us [R].
    "jetson-orin-nx": DeviceProfile("jetson-orin-nx", 15e12, 102.4e9, 16e9, _UE_TX_POWER_W, 25.0, 60e-6),
    # Jetson Orin Nano 8GB datasheet: 40 TOPS (sparse INT8), LPDDR5 68 GB/s, 8 GB, 7-15 W.
    # flops_per_s: dense FP16 ~ 10e12 / 2 = 5e12 [R]; overhead 80 us [R].
    "jetson-orin-nano": DeviceProfile("jetson-orin-nano", 5e12, 68e9, 8e9, _UE_TX_POWER_W, 15.0, 80e-6),
    # Flagship phone SoC (Snapdragon 8 Gen 3 class): LPDDR5X-4800 on 64-bit bus = 76.8 GB/s (vendor spec);
    # 2e12 effective FP16 FLOP/s on GPU/NPU, 12 GB usable, 8 W sustained, 200 us overhead: all [R].
    "phone-soc": DeviceProfile("phone-soc", 2e12, 76.8e9, 12e9, _UE_TX_POWER_W, 8.0, 200e-6),
    # GeForce RTX 4090 (Ada whitepaper): 165.2 dense FP16 tensor TFLOPS with FP32 accumulate, GDDR6X 1008 GB/s,
    # 24 GB, 450 W total graphics power; tx power 0.2 W (a UE-class radio) and 20 us overhead are [R].
    "rtx4090-edge": DeviceProfile("rtx4090-edge", 165.2e12, 1008e9, 24e9, _UE_TX_POWER_W, 450.0, 20e-6),
}
