"""Radio channel: the large-scale loss and small-scale fading of every BS-device link (pure numpy).

Contract: geometry and random state are drawn by separate functions that take an explicit
`rng: np.random.Generator`, and `sample_links(rng, scenario.radio)` composes them into a `LinkState`; the same
generator state always gives the same `LinkState` (replay). `redraw_fading` draws a new coherence block of
fast fading and keeps the large-scale state (distance, LoS state, shadowing), as the runtime does per step; when
it does so is the coherence rule (`redraws_at`, and `block_schedule`, its form over a whole replay). Every
function takes the cell as a `wdmoe.radio.params.RadioParams` (what `wdmoe.config.Scenario.radio` builds).

Path loss and LoS probability follow 3GPP TR 38.901 (V17/V19) Table 7.4.1-1 and Table 7.4.2-1 for UMa, UMi
street canyon and InH-office (mixed); distances in metres, carrier frequency `carrier_ghz` in GHz. The
log-distance model reproduces papers.md §2.2's PL = 128.1 + 37.6 log10(d / 1 km) [R]. Every default not taken
from TR 38.901 is marked "[R] reconstruction" (papers.md tags): it is ours, not the WDMoE papers'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from wdmoe.radio.exactmath import exp10, exp10_array, exp_array, log10, log10_array
from wdmoe.radio.link import LinkState
from wdmoe.radio.params import ChannelModel, Coherence, FadingName, LosMode, RadioParams

ModelName = Literal["uma", "umi", "inh"]

THERMAL_NOISE_DBM_PER_HZ = -174.0  # kT at 290 K
SPEED_OF_LIGHT_M_S = 3.0e8  # the value TR 38.901 Note 1 of Table 7.4.1-1 uses for the breakpoint distance
ENVIRONMENT_HEIGHT_M = 1.0  # h_E for UMi, and for UMa with h_UT < 13 m (TR 38.901 Table 7.4.1-1 Notes 1, 4)
UMA_TALL_UT_M = 13.0  # from this UT height on, UMa's C(d_2D, h_UT) > 0: h_E is drawn (Table 7.4.1-1 Note 1)
UMA_ENVIRONMENT_HEIGHTS_M = (12.0, 3.0)  # the drawn h_E: uniform over {12, 15, ..., h_UT - 1.5} m (Note 1)


@dataclass(frozen=True)
class Model38901:
    """Fixed parameters of one TR 38.901 scenario (Table 7.4.1-1 and Table 7.2-1).

    Attributes:
        name: "uma", "umi" (street canyon) or "inh" (indoor office, mixed).
        bs_height_m / ut_height_m: the standard's default BS and UT antenna heights in metres.
        shadowing_std_los_db / shadowing_std_nlos_db: log-normal shadow fading std sigma_SF in dB.
        min_distance_m / max_distance_m: the validity range of the formulas, on d_2D (UMa, UMi) or d_3D (InH).
        range_on_3d: whether the validity range applies to d_3D (InH) rather than d_2D.
    """

    name: ModelName
    bs_height_m: float
    ut_height_m: float
    shadowing_std_los_db: float
    shadowing_std_nlos_db: float
    min_distance_m: float
    max_distance_m: float
    range_on_3d: bool


MODELS: dict[str, Model38901] = {
    "uma": Model38901("uma", 25.0, 1.5, 4.0, 6.0, 10.0, 5000.0, False),
    "umi": Model38901("umi", 10.0, 1.5, 4.0, 7.82, 10.0, 5000.0, False),
    "inh": Model38901("inh", 3.0, 1.0, 3.0, 8.03, 1.0, 150.0, True),
}
LOG_DISTANCE_HEIGHTS_M = (25.0, 1.5)  # [R] reconstruction: UMa heights, used only for d_3D


def default_heights_m(model: ChannelModel) -> tuple[float, float]:
    """(BS, UT) antenna heights in metres when a scenario gives none: the TR 38.901 model's (Table 7.2-1)."""
    if model == "log_distance":
        return LOG_DISTANCE_HEIGHTS_M
    return MODELS[model].bs_height_m, MODELS[model].ut_height_m


@dataclass(frozen=True)
class LargeScale:
    """The large-scale state of D links: kept across coherence blocks, shapes (D,).

    Attributes:
        distance_2d_m / distance_3d_m: ground and 3D BS-device distances in metres.
        los: True where the link is line of sight.
        pathloss_db: path loss without shadowing, dB.
        shadowing_db: the log-normal shadowing draw, dB (0 where shadowing is off).
    """

    distance_2d_m: np.ndarray
    distance_3d_m: np.ndarray
    los: np.ndarray
    pathloss_db: np.ndarray
    shadowing_db: np.ndarray
    environment_height_m: np.ndarray


def distance_3d_m(distance_2d_m: np.ndarray | float, bs_height_m: float, ut_height_m: float) -> np.ndarray:
    """d_3D = sqrt(d_2D^2 + (h_BS - h_UT)^2) in metres (TR 38.901 Figure 7.4.1-1); any shape."""
    height = bs_height_m - ut_height_m
    return np.sqrt(np.square(np.asarray(distance_2d_m, dtype=float)) + height * height)


def breakpoint_distance_m(bs_height_m: float, ut_height_m: float, carrier_ghz: float,
                          environment_height_m: Any = ENVIRONMENT_HEIGHT_M) -> Any:
    """d'_BP = 4 h'_BS h'_UT f_c / c with h' = h - h_E (TR 38.901 Table 7.4.1-1 Note 1), metres; h_E = 1 m unless
    given (a float, or an array of per-link draws, `draw_environment_height_m`: then an array)."""
    h_bs = bs_height_m - environment_height_m
    h_ut = ut_height_m - environment_height_m
    return 4.0 * h_bs * h_ut * carrier_ghz * 1e9 / SPEED_OF_LIGHT_M_S


def uma_c(distance_2d_m: np.ndarray, ut_height_m: float) -> np.ndarray:
    """C(d_2D, h_UT) of TR 38.901 UMa (Table 7.4.2-1 and Note 1 of Table 7.4.1-1), (D,): 0 for h_UT < 13 m or
    d_2D <= 18 m, else ((h_UT - 13) / 10)^1.5 * 5/4 (d_2D / 100)^3 exp(-d_2D / 150)."""
    d = np.atleast_1d(np.asarray(distance_2d_m, dtype=float))
    c_prime = 0.0 if ut_height_m <= UMA_TALL_UT_M else ((ut_height_m - 13.0) / 10.0
                                                        * math.sqrt((ut_height_m - 13.0) / 10.0))  # ^1.5
    cube = d / 100.0
    cube = cube * cube * cube  # products, not pow: pow's last bit depends on the CPU
    return np.where(d <= 18.0, 0.0, c_prime * 1.25 * cube * exp_array(-d / 150.0))


def draw_environment_height_m(rng: np.random.Generator, model: ChannelModel, distance_2d_m: np.ndarray,
                              ut_height_m: float) -> np.ndarray:
    """The effective environment height h_E per link in metres (TR 38.901 Table 7.4.1-1 Note 1), (D,).

    UMa: 1 m with probability 1 / (1 + C(d_2D, h_UT)) (`uma_c`), else uniform over {12, 15, ..., h_UT - 1.5} m
    ({12} when h_UT - 1.5 < 12, as Sionna does). Draws, per link: U(0, 1) against the probability, then the index
    of the height (numpy's integers), both always, so the draw count depends only on D. Where C = 0 everywhere
    (UMa with h_UT <= 13 m, UMi, InH, log-distance) h_E is 1 m and nothing is drawn: those scenarios replay the
    draws they always did. h_E is part of the large-scale state: drawn once per drop, with the LoS state.
    """
    d = np.atleast_1d(np.asarray(distance_2d_m, dtype=float))
    if model != "uma" or ut_height_m <= UMA_TALL_UT_M:
        return np.full(d.shape, ENVIRONMENT_HEIGHT_M)
    one = rng.random(d.shape) < 1.0 / (1.0 + uma_c(d, ut_height_m))
    first, step = UMA_ENVIRONMENT_HEIGHTS_M
    count = max(math.floor((ut_height_m - 1.5 - first) / step) + 1, 1)
    index = rng.integers(0, count, size=d.shape)
    return np.where(one, ENVIRONMENT_HEIGHT_M, first + step * index)


@dataclass(frozen=True)
class RangeCheck:
    """The TR 38.901 validity range of a model applied to some distances (the one place the rule is written).

    Attributes:
        kind: "d_2D" or "d_3D", the distance the range applies to. distance_m: those distances, metres.
        rule: "10 m <= d_2D <= 5000 m (TR 38.901 Table 7.4.1-1)". ok: whether every distance is inside.
    """

    kind: str
    distance_m: np.ndarray
    rule: str
    ok: bool


def check_range(model: ModelName, d2d: np.ndarray | float, d3d: np.ndarray | float) -> RangeCheck:
    """Whether ground distances `d2d` and 3D distances `d3d` (metres, same shape) lie in the model's range."""
    spec = MODELS[model]
    kind, d = ("d_3D", np.atleast_1d(d3d)) if spec.range_on_3d else ("d_2D", np.atleast_1d(d2d))
    ok = not d.size or bool(d.min() >= spec.min_distance_m and d.max() <= spec.max_distance_m)
    rule = f"{spec.min_distance_m:g} m <= {kind} <= {spec.max_distance_m:g} m (TR 38.901 Table 7.4.1-1)"
    return RangeCheck(kind, d, rule, ok)


def _check_range(model: ModelName, d2d: np.ndarray, d3d: np.ndarray) -> None:
    check = check_range(model, d2d, d3d)
    if not check.ok:
        d = check.distance_m
        raise ValueError(f"{model} path loss is defined for {check.rule}; got {check.kind} from {d.min():.3g} m "
                         f"to {d.max():.3g} m")


def _two_slope_los_db(
    d2d: np.ndarray,
    d3d: np.ndarray,
    carrier_ghz: float,
    bs_h: float,
    ut_h: float,
    pl0_db: float,
    slope1: float,
    bp_coeff: float,
    h_e: float | np.ndarray = ENVIRONMENT_HEIGHT_M,
) -> np.ndarray:
    """UMa/UMi LoS: slope1 below the breakpoint, 40 dB/decade beyond it (PL1/PL2 of Table 7.4.1-1); h_E a float
    or one per link."""
    d_bp = breakpoint_distance_m(bs_h, ut_h, carrier_ghz, h_e)
    freq_db = 20.0 * log10(carrier_ghz)  # radio.exactmath: the same bits on every CPU (module docstring)
    pl1 = pl0_db + slope1 * log10_array(d3d) + freq_db
    height2 = (bs_h - ut_h) * (bs_h - ut_h)
    bp_db = log10(d_bp * d_bp + height2) if np.ndim(d_bp) == 0 else log10_array(d_bp * d_bp + height2)
    pl2 = pl0_db + 40.0 * log10_array(d3d) + freq_db - bp_coeff * bp_db
    return np.where(d2d <= d_bp, pl1, pl2)


def pathloss_38901_db(
    model: ModelName,
    distance_2d_m: np.ndarray,
    carrier_ghz: float,
    los: np.ndarray | bool,
    bs_height_m: float | None = None,
    ut_height_m: float | None = None,
    environment_height_m: np.ndarray | float | None = None,
) -> np.ndarray:
    """Path loss in dB of TR 38.901 Table 7.4.1-1, without shadowing; distances (D,) in metres, f_c in GHz.

    UMa LoS:  PL1 = 28.0 + 22 log10(d_3D) + 20 log10(f_c)                  for d_2D <= d'_BP
              PL2 = 28.0 + 40 log10(d_3D) + 20 log10(f_c) - 9 log10(d'_BP^2 + (h_BS - h_UT)^2)
    UMa NLoS: PL' = 13.54 + 39.08 log10(d_3D) + 20 log10(f_c) - 0.6 (h_UT - 1.5)
    UMi LoS:  PL1 = 32.4 + 21 log10(d_3D) + 20 log10(f_c);  PL2 as UMa with 32.4 and 9.5 log10(...)
    UMi NLoS: PL' = 22.4 + 35.3 log10(d_3D) + 21.3 log10(f_c) - 0.3 (h_UT - 1.5)
    InH LoS:  PL  = 32.4 + 17.3 log10(d_3D) + 20 log10(f_c)
    InH NLoS: PL' = 17.3 + 38.3 log10(d_3D) + 24.9 log10(f_c)
    and NLoS PL = max(PL_LoS, PL'). Heights default to the model's (Table 7.2-1 / 7.4.1-1). The breakpoint's
    environment height h_E is 1 m for UMi and for UMa with h_UT <= 13 m; for a taller UMa UT the standard draws it
    per link: pass `environment_height_m` (D,) from `draw_environment_height_m` (ValueError without it). Raises
    ValueError outside the table's distance range.
    """
    spec = MODELS[model]
    bs_h = spec.bs_height_m if bs_height_m is None else bs_height_m
    ut_h = spec.ut_height_m if ut_height_m is None else ut_height_m
    if environment_height_m is None and model == "uma" and ut_h > UMA_TALL_UT_M:
        raise ValueError(f"uma path loss with h_UT = {ut_h:g} m needs the environment height h_E, which TR 38.901 "
                         "Table 7.4.1-1 Note 1 draws per link for h_UT > 13 m: pass environment_height_m from "
                         "draw_environment_height_m(rng, ...)")
    h_e = ENVIRONMENT_HEIGHT_M if environment_height_m is None else environment_height_m
    d2d = np.atleast_1d(np.asarray(distance_2d_m, dtype=float))
    d3d = distance_3d_m(d2d, bs_h, ut_h)
    _check_range(model, d2d, d3d)
    log_d, log_f = log10_array(d3d), log10(carrier_ghz)
    if model == "uma":
        pl_los = _two_slope_los_db(d2d, d3d, carrier_ghz, bs_h, ut_h, 28.0, 22.0, 9.0, h_e)
        pl_nlos = 13.54 + 39.08 * log_d + 20.0 * log_f - 0.6 * (ut_h - 1.5)
    elif model == "umi":
        pl_los = _two_slope_los_db(d2d, d3d, carrier_ghz, bs_h, ut_h, 32.4, 21.0, 9.5, h_e)
        pl_nlos = 22.4 + 35.3 * log_d + 21.3 * log_f - 0.3 * (ut_h - 1.5)
    else:
        pl_los = 32.4 + 17.3 * log_d + 20.0 * log_f
        pl_nlos = 17.3 + 38.3 * log_d + 24.9 * log_f
    return np.where(np.asarray(los, dtype=bool), pl_los, np.maximum(pl_los, pl_nlos))


def pathloss_log_distance_db(
    distance_m: np.ndarray, pl0_db: float = 128.1, d0_m: float = 1000.0, exponent: float = 3.76
) -> np.ndarray:
    """PL(d) = PL0 + 10 n log10(d / d0) in dB; distance (D,) in metres.

    Defaults give 128.1 + 37.6 log10(d / 1 km) (papers.md §2.2, a placeholder there) [R] reconstruction.
    """
    d = np.asarray(distance_m, dtype=float)
    if np.any(d <= 0.0):
        raise ValueError(f"log-distance path loss needs distances > 0 m; got min {d.min():g} m")
    return pl0_db + 10.0 * exponent * log10_array(d / d0_m)


def los_probability(
    model: ModelName, distance_2d_m: np.ndarray, ut_height_m: float | None = None
) -> np.ndarray:
    """Pr_LOS of TR 38.901 Table 7.4.2-1 (outdoor UTs; InH is indoor-mixed office); d_2D (D,) in metres.

    UMa: 1 for d <= 18 m, else [18/d + exp(-d/63)(1 - 18/d)] [1 + C'(h_UT) 5/4 (d/100)^3 exp(-d/150)],
         C'(h_UT) = 0 for h_UT <= 13 m, ((h_UT - 13)/10)^1.5 for 13 m < h_UT <= 23 m.
    UMi: 1 for d <= 18 m, else 18/d + exp(-d/36)(1 - 18/d).
    InH-mixed: 1 for d <= 1.2 m, exp(-(d - 1.2)/4.7) for 1.2 m < d < 6.5 m, 0.32 exp(-(d - 6.5)/32.6) beyond.
    """
    d = np.maximum(np.atleast_1d(np.asarray(distance_2d_m, dtype=float)), 1e-9)
    if model == "inh":
        near = exp_array(-(d - 1.2) / 4.7)
        far = 0.32 * exp_array(-(d - 6.5) / 32.6)
        return np.where(d <= 1.2, 1.0, np.where(d < 6.5, near, far))
    scale = 63.0 if model == "uma" else 36.0
    p = 18.0 / d + exp_array(-d / scale) * (1.0 - 18.0 / d)
    if model == "uma":
        h_ut = MODELS["uma"].ut_height_m if ut_height_m is None else ut_height_m
        p = p * (1.0 + uma_c(d, h_ut))
    return np.where(d <= 18.0, 1.0, p)


def draw_los(
    rng: np.random.Generator,
    model: ModelName,
    distance_2d_m: np.ndarray,
    mode: LosMode = "probabilistic",
    ut_height_m: float | None = None,
) -> np.ndarray:
    """LoS state per link, bool (D,): Bernoulli(Pr_LOS) when probabilistic, all True / False when forced."""
    d = np.atleast_1d(np.asarray(distance_2d_m, dtype=float))
    if mode == "los":
        return np.ones(d.shape, dtype=bool)
    if mode == "nlos":
        return np.zeros(d.shape, dtype=bool)
    return rng.random(d.shape) < los_probability(model, d, ut_height_m)


def shadowing_std_db(model: ModelName, los: np.ndarray) -> np.ndarray:
    """sigma_SF in dB per link (TR 38.901 Table 7.4.1-1): UMa 4/6, UMi 4/7.82, InH 3/8.03 (LoS/NLoS)."""
    spec = MODELS[model]
    return np.where(np.asarray(los, dtype=bool), spec.shadowing_std_los_db, spec.shadowing_std_nlos_db)


def draw_shadowing_db(rng: np.random.Generator, std_db: np.ndarray) -> np.ndarray:
    """Log-normal shadowing: X ~ N(0, sigma^2) in dB per link, independent across links; shape of std_db."""
    std = np.asarray(std_db, dtype=float)
    return rng.normal(0.0, 1.0, size=std.shape) * std


def draw_fading(
    rng: np.random.Generator, fading: FadingName, size: int | tuple[int, ...], k_factor_db: float = 9.0
) -> np.ndarray:
    """Block-fading power gains |h|^2 (linear, mean 1), i.i.d. over `size`.

    rayleigh: h ~ CN(0, 1), so |h|^2 ~ Exp(1).
    rician:   h = sqrt(K/(K+1)) + sqrt(1/(K+1)) CN(0, 1), K = 10^(k_factor_db/10); E|h|^2 = 1. The default
              K = 9 dB is the TR 38.901 UMa LoS mean K factor (Table 7.5-6).
    none:     |h|^2 = 1.
    """
    if fading == "none":
        return np.ones(size)
    scattered = (rng.standard_normal(size) + 1j * rng.standard_normal(size)) / np.sqrt(2.0)
    if fading == "rayleigh":
        return scattered.real * scattered.real + scattered.imag * scattered.imag  # |h|^2 (abs is a CPU's hypot)
    k = exp10(k_factor_db / 10.0)
    h = np.sqrt(k / (k + 1.0)) + np.sqrt(1.0 / (k + 1.0)) * scattered
    return h.real * h.real + h.imag * h.imag


def draw_distances_2d_m(
    rng: np.random.Generator, num_devices: int, distance_min_m: float, distance_max_m: float
) -> np.ndarray:
    """Ground distances (D,) in metres of devices dropped uniformly over the annulus [min, max] around the BS.

    Uniform in area, so r = sqrt(U(min^2, max^2)) [R] reconstruction (papers.md §2.2 only says d ~ U).
    """
    return np.sqrt(rng.uniform(distance_min_m * distance_min_m, distance_max_m * distance_max_m, size=num_devices))


def noise_psd_w_per_hz(noise_figure_db: float) -> float:
    """N0 * NF in W/Hz: thermal noise -174 dBm/Hz raised by the receiver noise figure (dB)."""
    return exp10((THERMAL_NOISE_DBM_PER_HZ + noise_figure_db - 30.0) / 10.0)


def snr_per_hz(
    tx_power_dbm: float, pathloss_db: np.ndarray, gain: np.ndarray, noise_figure_db: float
) -> np.ndarray:
    """Received SNR per hertz in Hz: P_tx * |h|^2 / (PL * N0 * NF), with PL = 10^(pathloss_db/10); shape (D,).

    The SNR over a share of b Hz is snr_per_hz / b (the transmit power spread over the share).
    """
    rx_w = exp10_array((tx_power_dbm - np.asarray(pathloss_db, dtype=float) - 30.0) / 10.0)
    return rx_w * np.asarray(gain, dtype=float) / noise_psd_w_per_hz(noise_figure_db)


def sample_large_scale(rng: np.random.Generator, radio: RadioParams) -> LargeScale:
    """Drop the devices and draw their LoS state and shadowing (the slow part of a link), shapes (D,)."""
    d2d = draw_distances_2d_m(rng, radio.num_devices, radio.distance_min_m, radio.distance_max_m)
    return large_scale_at(rng, radio, d2d)


def large_scale_at(rng: np.random.Generator, radio: RadioParams, d2d: np.ndarray) -> LargeScale:
    """LoS state and shadowing of devices at the given ground distances `d2d` (metres), drawn from `rng`."""
    ch = radio.channel
    d3d = distance_3d_m(d2d, ch.bs_height_m, ch.ut_height_m)
    if ch.model == "log_distance":
        los = np.ones(d2d.shape, dtype=bool)
        h_e = np.full(d2d.shape, ENVIRONMENT_HEIGHT_M)
        pathloss = pathloss_log_distance_db(d3d, ch.pl0_db, ch.d0_m, ch.exponent)
        std = np.full(d2d.shape, ch.log_distance_shadowing_std_db)
    else:
        los = draw_los(rng, ch.model, d2d, ch.los, ch.ut_height_m)
        h_e = draw_environment_height_m(rng, ch.model, d2d, ch.ut_height_m)  # draws only for UMa h_UT > 13 m
        pathloss = pathloss_38901_db(ch.model, d2d, ch.carrier_ghz, los, ch.bs_height_m, ch.ut_height_m, h_e)
        std = shadowing_std_db(ch.model, los)
    shadowing = draw_shadowing_db(rng, std) if ch.shadowing else np.zeros(d2d.shape)
    return LargeScale(d2d, d3d, los, pathloss, shadowing, h_e)


def compose_links(
    distance_m: np.ndarray, loss_db: np.ndarray, gain_dl: np.ndarray, gain_ul: np.ndarray, radio: RadioParams
) -> LinkState:
    """A LinkState from the large-scale loss (path loss + shadowing, dB) and the DL/UL gains, shapes (D,)."""
    nf = radio.noise_figure_db
    return LinkState(
        distance_m=distance_m,
        pathloss_db=loss_db,
        gain_dl=gain_dl,
        gain_ul=gain_ul,
        snr_dl_per_hz=snr_per_hz(radio.bs_tx_power_dbm, loss_db, gain_dl, nf),
        snr_ul_per_hz=snr_per_hz(radio.device_tx_power_dbm, loss_db, gain_ul, nf),
        dl_psd_pool_hz=radio.dl_psd_pool_hz,
    )


def draw_gains(rng: np.random.Generator, radio: RadioParams, num_devices: int) -> tuple[np.ndarray, np.ndarray]:
    """DL and UL fading gains (num_devices,), DL drawn first; UL is a copy of DL when the fading is reciprocal."""
    fading = radio.fading
    gain_dl = draw_fading(rng, fading.model, num_devices, fading.k_factor_db)
    if fading.reciprocal:
        return gain_dl, gain_dl.copy()
    return gain_dl, draw_fading(rng, fading.model, num_devices, fading.k_factor_db)


def sample_links(rng: np.random.Generator, radio: RadioParams) -> LinkState:
    """One channel realization of the scenario's D devices: geometry, LoS, shadowing and a fading block.

    The same generator state gives the same LinkState. Draw order: distances, LoS, the environment height (UMa
    with h_UT > 13 m only), shadowing, DL fading, UL fading (UL is a copy of DL when the fading is reciprocal).
    """
    large = sample_large_scale(rng, radio)
    gain_dl, gain_ul = draw_gains(rng, radio, radio.num_devices)
    loss_db = large.pathloss_db + large.shadowing_db
    return compose_links(large.distance_3d_m, loss_db, gain_dl, gain_ul, radio)


def redraw_fading(rng: np.random.Generator, links: LinkState, radio: RadioParams) -> LinkState:
    """A new coherence block: fresh DL/UL fading gains, same distances and large-scale loss as `links`."""
    gain_dl, gain_ul = draw_gains(rng, radio, links.num_devices)
    return compose_links(links.distance_m, links.pathloss_db, gain_dl, gain_ul, radio)


# The coherence rule: the fading is redrawn at every event of the kind the scenario's `coherence` names.
EVENTS: tuple[Coherence, ...] = ("request", "step", "layer")


def redraws_at(coherence: Coherence, event: Coherence) -> bool:
    """Whether a new fading block starts at `event` ("request", "step" or "layer") under `coherence`."""
    if coherence not in EVENTS:
        raise ValueError(f"scenario field 'coherence' = {coherence!r}: use 'step', 'layer' or 'request'")
    return event == coherence


def block_schedule(request_start: np.ndarray, num_layers: int, coherence: Coherence) -> np.ndarray:
    """(S, L) int: the fading block each (step, layer) sees when `redraws_at` is applied in order, steps that
    start a request marked in `request_start` (S,) bool. Blocks count from 1 (block 0 is `sample_links`' draw).

    Each event kind adds its count up to and including (s, l): requests started, steps begun, layers begun."""
    steps = request_start.shape[0]
    blocks = np.zeros((steps, num_layers), dtype=np.int64)
    if redraws_at(coherence, "request"):
        blocks += np.cumsum(request_start)[:, None]
    if redraws_at(coherence, "step"):
        blocks += np.arange(1, steps + 1)[:, None]
    if redraws_at(coherence, "layer"):
        blocks += np.arange(1, steps * num_layers + 1).reshape(steps, num_layers)
    return blocks
