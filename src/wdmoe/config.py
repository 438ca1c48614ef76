"""Scenario configuration: the validated description of one cell (devices, channel, powers, bandwidth).

Contract: `load_scenario(path)` reads a TOML file into a frozen `Scenario` or raises `ScenarioError` whose
message names the field, the value, its unit and what is allowed
(`scenario field 'bandwidth_hz' = -5 Hz: must be > 0`); unknown keys are refused by name.
`Scenario.default()` gives the defaults without a file. Every default here is ours, not the WDMoE papers'
("[R] reconstruction", papers.md §0.1), unless it cites TR 38.901.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from wdmoe.errors import WdmoeError
from wdmoe.input_files import load_toml
from wdmoe.radio.channel import check_range, default_heights_m, distance_3d_m
from wdmoe.radio.compute import PRESETS
from wdmoe.radio.link import DownlinkPower
from wdmoe.radio.params import (
    DEFAULT_BS_TX_POWER_DBM,
    DEFAULT_DEVICE_TX_POWER_DBM,
    ChannelModel,
    ChannelParams,
    Coherence,
    FadingName,
    FadingParams,
    LosMode,
    RadioParams,
)
from wdmoe.radio.rate import PoolMode
from wdmoe.validation import MAX_DEVICES, ActivationBits, BandwidthHz, Seed, Strict, describe_errors

BandwidthPool = Literal["shared", "separate"]
DownlinkPowerName = Literal["shared_psd", "full_per_device"]  # wdmoe.radio.link.DownlinkPower's values

# [R] reconstruction: a mix of Jetson kits, as in the WDMoE-J testbed (papers.md §3.5, which kits is unknown).
DEFAULT_DEVICE_PRESETS: tuple[str, ...] = ("jetson-agx-orin", "jetson-orin-nx", "jetson-orin-nano")
DEFAULT_BS_PRESET = "rtx4090-edge"  # [R] reconstruction

class ScenarioError(WdmoeError):
    """A scenario file or object is invalid; the message names the field, the value, the unit and the rule."""


class _Strict(Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # a scenario takes no "43" for 43.0


class ChannelConfig(_Strict):
    """Large-scale channel: path-loss model, LoS state, shadowing (TR 38.901 §7.4 or log-distance)."""

    model: ChannelModel = "uma"  # [R] reconstruction: papers.md §2.2 calls its PL "UMa-style"
    los: LosMode = "probabilistic"  # Table 7.4.2-1 draw, or forced
    shadowing: bool = True  # log-normal, sigma_SF per model and LoS state (Table 7.4.1-1)
    carrier_ghz: Annotated[float, Field(ge=0.5, le=100.0)] = 3.5  # GHz; [R]; TR 38.901 covers 0.5-100 GHz
    # None = the model's heights (TR 38.901: UMa 25 / 1.5 m, UMi 10 / 1.5 m, InH 3 / 1 m)
    bs_height_m: Annotated[float, Field(gt=0.0)] | None = None  # m
    ut_height_m: Annotated[float, Field(gt=0.0)] | None = None  # m
    pl0_db: float = 128.1  # dB at d0_m, log_distance only; papers.md §2.2 placeholder [R]
    d0_m: Annotated[float, Field(gt=0.0)] = 1000.0  # m, log_distance reference distance
    exponent: Annotated[float, Field(gt=0.0)] = 3.76  # log_distance path-loss exponent n
    log_distance_shadowing_std_db: Annotated[float, Field(ge=0.0)] = 8.0  # dB; [R] (TR 36.814 macro value)

    @property
    def resolved_bs_height_m(self) -> float:
        return default_heights_m(self.model)[0] if self.bs_height_m is None else self.bs_height_m

    @property
    def resolved_ut_height_m(self) -> float:
        return default_heights_m(self.model)[1] if self.ut_height_m is None else self.ut_height_m

    @property
    def params(self) -> ChannelParams:
        """The radio model's plain value of this table, heights resolved."""
        return ChannelParams(self.model, self.los, self.shadowing, self.carrier_ghz, self.resolved_bs_height_m,
                             self.resolved_ut_height_m, self.pl0_db, self.d0_m, self.exponent,
                             self.log_distance_shadowing_std_db)

    @model_validator(mode="after")
    def _heights_fit_model(self) -> ChannelConfig:
        bs_h, ut_h = self.resolved_bs_height_m, self.resolved_ut_height_m
        if self.model in ("uma", "umi") and not 1.5 <= ut_h <= 22.5:
            raise ValueError(
                f"scenario field 'channel.ut_height_m' = {ut_h:g} m: {self.model} needs "
                "1.5 m <= h_UT <= 22.5 m (TR 38.901 Table 7.4.1-1)"
            )
        if bs_h <= ut_h:
            raise ValueError(
                f"scenario field 'channel.bs_height_m' = {bs_h:g} m: must be above "
                f"channel.ut_height_m = {ut_h:g} m"
            )
        return self


class FadingConfig(_Strict):
    """Small-scale block fading of the power gain |h|^2 (mean 1)."""

    model: FadingName = "rayleigh"  # papers.md §2.2 [R]
    k_factor_db: float = 9.0  # dB, rician only; TR 38.901 Table 7.5-6 UMa LoS mean K
    reciprocal: bool = False  # True: the UL gain equals the DL gain (TDD); False: independent draws [R]

    @property
    def params(self) -> FadingParams:
        return FadingParams(self.model, self.k_factor_db, self.reciprocal)


class Scenario(_Strict):
    """One cell: a BS and `num_devices` devices, their links and compute; frozen once validated."""

    num_devices: Annotated[int, Field(ge=1, le=MAX_DEVICES)] = 8
    distance_min_m: Annotated[float, Field(gt=0.0)] = 50.0  # m, ground distance; [R]
    distance_max_m: Annotated[float, Field(gt=0.0)] = 300.0  # m; [R] (papers.md §2.2 placeholder is 500 m)
    channel: ChannelConfig = ChannelConfig()
    fading: FadingConfig = FadingConfig()
    noise_figure_db: Annotated[float, Field(ge=0.0)] = 7.0  # dB, both receivers; [R] (between BS 5, UE 9)
    bs_tx_power_dbm: float = DEFAULT_BS_TX_POWER_DBM  # dBm, papers.md §2.2 placeholder [R]
    device_tx_power_dbm: float = DEFAULT_DEVICE_TX_POWER_DBM  # dBm, papers.md §2.2 placeholder [R]
    bandwidth_hz: BandwidthHz = 20e6  # Hz in total; papers.md §2.2 placeholder [R]
    # shared: one pool of bandwidth_hz split per device, used for DL then UL; separate: a DL and an UL pool,
    # each of bandwidth_hz (paired FDD spectrum) [R]
    bandwidth_pool: BandwidthPool = "shared"
    # shared_psd: the BS's power is shared by the concurrent downlinks at a constant spectral density over the
    # band (a share of b Hz gets bs_tx_power * b / bandwidth_hz); full_per_device: every downlink gets the full
    # bs_tx_power (the WDMoE papers' model, kept for comparison; it overstates the DL SNR with many devices) [R]
    downlink_power: DownlinkPowerName = "shared_psd"
    device_presets: Annotated[tuple[str, ...], Field(min_length=1, strict=False)] = DEFAULT_DEVICE_PRESETS
    activation_bits: ActivationBits = 16  # bits per hidden value on the air (bf16) [R]
    coherence: Coherence = "step"  # fading redrawn every forward step, every layer, or once per request [R]
    # BS compute: a fixed time per layer in seconds, or else a wdmoe.radio.compute.PRESETS name
    bs_layer_time_s: Annotated[float, Field(gt=0.0)] | None = None  # s per layer at the BS
    bs_preset: str | None = DEFAULT_BS_PRESET
    seed: Seed = 0

    @classmethod
    def default(cls, num_devices: int = 8) -> Scenario:
        """The default scenario (every value [R] reconstruction) with `num_devices` devices."""
        return cls(num_devices=num_devices)

    @property
    def radio(self) -> RadioParams:
        """The radio model's plain value of this scenario (what wdmoe.radio reads); built on each access."""
        pool = PoolMode.SHARED if self.bandwidth_pool == "shared" else PoolMode.SEPARATE
        return RadioParams(self.num_devices, self.distance_min_m, self.distance_max_m, self.channel.params,
                           self.fading.params, self.noise_figure_db, self.bs_tx_power_dbm, self.device_tx_power_dbm,
                           self.bandwidth_hz, pool, self.activation_bits, self.coherence,
                           DownlinkPower(self.downlink_power))

    def preset_of_device(self, device: int) -> str:
        """The compute preset of device `device`: `device_presets` cycled over the devices."""
        return self.device_presets[device % len(self.device_presets)]

    @field_validator("device_presets", "bs_preset")
    @classmethod
    def _known_presets(cls, value: Any) -> Any:
        names = [value] if isinstance(value, str) else list(value or ())
        unknown = [name for name in names if name not in PRESETS]
        if unknown:
            raise ValueError(f"unknown preset {unknown[0]!r}; known presets: {', '.join(sorted(PRESETS))}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        if self.distance_max_m <= self.distance_min_m:
            raise ValueError(
                f"scenario field 'distance_max_m' = {self.distance_max_m:g} m: must be > "
                f"distance_min_m = {self.distance_min_m:g} m"
            )
        if self.bs_layer_time_s is None and self.bs_preset is None:
            raise ValueError("scenario fields 'bs_layer_time_s' and 'bs_preset' are both unset: set one")
        self._check_distance_range()
        return self

    def _check_distance_range(self) -> None:
        ch = self.channel
        if ch.model == "log_distance":
            return
        for field, d2d in (("distance_min_m", self.distance_min_m), ("distance_max_m", self.distance_max_m)):
            check = check_range(ch.model, d2d, distance_3d_m(d2d, ch.resolved_bs_height_m, ch.resolved_ut_height_m))
            if not check.ok:
                raise ValueError(
                    f"scenario field '{field}' = {d2d:g} m: channel.model '{ch.model}' is defined for {check.rule}, "
                    f"here {check.kind} = {float(check.distance_m[0]):.4g} m"
                )


def parse_scenario(data: dict[str, Any], source: str | None = None) -> Scenario:
    """Validate a TOML-shaped dict into a Scenario; raises ScenarioError naming every bad field.

    `source` (a file name) prefixes the message when given.
    """
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        message = describe_errors(exc, "scenario", Scenario)
        raise ScenarioError(f"{source}: {message}" if source else message) from None


def load_scenario(path: str | Path) -> Scenario:
    """Read a TOML scenario file; raises ScenarioError for bad TOML, bad values or unknown keys."""
    return parse_scenario(load_toml(path, "scenario", ScenarioError), source=str(path))
