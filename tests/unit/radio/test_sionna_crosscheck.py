"""radio.channel against Sionna's TR 38.901 implementation (the optional `sionna` extra, sionna-no-rt).

Same geometry, LoS state fixed, no shadowing: our path loss must agree with Sionna's basic path loss within
0.5 dB (in practice ~0.01 dB: Sionna uses c = 299792458 m/s in the breakpoint distance, TR 38.901 uses 3e8),
and our LoS probability with Sionna's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from wdmoe.radio.channel import draw_environment_height_m, los_probability, pathloss_38901_db

pytest.importorskip("sionna")
torch = pytest.importorskip("torch")
tr38901 = pytest.importorskip("sionna.phy.channel.tr38901")

pytestmark = pytest.mark.slow  # importing Sionna takes several seconds

TOLERANCE_DB = 0.5

# (model, BS height m, UT height m, ground distances in metres inside the TR 38.901 validity range)
GEOMETRIES = [
    ("uma", 25.0, 1.5, [10.0, 35.0, 120.0, 400.0, 559.0, 800.0, 1500.0, 4900.0]),
    ("uma", 25.0, 8.0, [20.0, 300.0, 2500.0]),
    ("uma", 25.0, 13.0, [20.0, 300.0, 2500.0]),  # C(d_2D, 13 m) = 0: h_E = 1 m, no draw
    ("umi", 10.0, 1.5, [10.0, 50.0, 150.0, 209.0, 400.0, 1200.0, 4900.0]),
    ("inh", 3.0, 1.0, [1.5, 3.0, 8.0, 25.0, 70.0, 140.0]),
]
CARRIERS_GHZ = [0.9, 3.5, 28.0]


def _sionna_scenario(model: str, carrier_ghz: float) -> Any:
    fc = carrier_ghz * 1e9
    array = tr38901.PanelArray(
        num_rows_per_panel=1,
        num_cols_per_panel=1,
        polarization="single",
        polarization_type="V",
        antenna_pattern="omni",
        carrier_frequency=fc,
        precision="double",
    )
    common = {"enable_shadow_fading": False, "precision": "double", "device": "cpu"}
    if model == "uma":
        return tr38901.UMaScenario(fc, "low", array, array, "downlink", **common)
    if model == "umi":
        return tr38901.UMiScenario(fc, "low", array, array, "downlink", **common)
    return tr38901.InHScenario(fc, "mixed", array, array, "downlink", **common)


def _place(scenario: Any, model: str, bs_h: float, ut_h: float, d2d: np.ndarray, los: bool) -> None:
    n = d2d.shape[0]
    ut_loc = torch.zeros(1, n, 3, dtype=torch.float64)
    ut_loc[0, :, 0] = torch.from_numpy(d2d)
    ut_loc[0, :, 2] = ut_h
    bs_loc = torch.zeros(1, 1, 3, dtype=torch.float64)
    bs_loc[0, 0, 2] = bs_h
    zeros_ut = torch.zeros(1, n, 3, dtype=torch.float64)
    indoor = torch.full((1, n), model == "inh", dtype=torch.bool)
    scenario.set_topology(
        ut_loc, bs_loc, zeros_ut, torch.zeros(1, 1, 3, dtype=torch.float64), zeros_ut, indoor, los=los
    )


@pytest.mark.parametrize("carrier_ghz", CARRIERS_GHZ)
@pytest.mark.parametrize("los", [True, False], ids=["los", "nlos"])
@pytest.mark.parametrize(("model", "bs_h", "ut_h", "distances"), GEOMETRIES)
def test_pathloss_agrees_with_sionna(
    model: str, bs_h: float, ut_h: float, distances: list[float], los: bool, carrier_ghz: float
) -> None:
    d2d = np.array(distances)
    scenario = _sionna_scenario(model, carrier_ghz)
    _place(scenario, model, bs_h, ut_h, d2d, los)
    theirs = scenario.basic_pathloss.numpy()[0, 0]
    ours = pathloss_38901_db(model, d2d, carrier_ghz, los, bs_h, ut_h)  # type: ignore[arg-type]
    assert theirs.shape == ours.shape
    assert np.max(np.abs(ours - theirs)) < TOLERANCE_DB, f"ours {ours} vs Sionna {theirs}"


@pytest.mark.parametrize(("model", "bs_h", "ut_h", "distances"), GEOMETRIES)
def test_los_probability_agrees_with_sionna(
    model: str, bs_h: float, ut_h: float, distances: list[float]
) -> None:
    d2d = np.array(distances)
    scenario = _sionna_scenario(model, 3.5)
    _place(scenario, model, bs_h, ut_h, d2d, True)
    theirs = scenario.los_probability.numpy()[0, 0]
    ours = los_probability(model, d2d, ut_h)  # type: ignore[arg-type]
    np.testing.assert_allclose(ours, theirs, atol=1e-9)


# UMa UTs above 13 m: TR 38.901 Table 7.4.1-1 Note 1 draws the breakpoint's environment height h_E per link.
TALL_UTS = [(13.5, [1.0, 12.0]), (16.5, [1.0, 12.0, 15.0]), (22.5, [1.0, 12.0, 15.0, 18.0, 21.0])]
TALL_DISTANCES = np.array([20.0, 150.0, 400.0, 900.0, 3000.0, 4900.0])


def _fix_environment_height(scenario: Any, h_e: np.ndarray) -> None:
    """Replace Sionna's h_E draw on this instance by given heights (1, 1, n), so one draw compares exactly."""
    fixed = torch.from_numpy(h_e).reshape(1, 1, -1)
    scenario._sample_environment_height = lambda distance_2d, h_ut: fixed


@pytest.mark.parametrize("carrier_ghz", CARRIERS_GHZ)
@pytest.mark.parametrize("los", [True, False], ids=["los", "nlos"])
@pytest.mark.parametrize(("ut_h", "heights"), TALL_UTS)
def test_tall_uma_pathloss_agrees_with_sionna_for_each_environment_height(
    ut_h: float, heights: list[float], los: bool, carrier_ghz: float
) -> None:
    for h_e in heights:
        scenario = _sionna_scenario("uma", carrier_ghz)
        _fix_environment_height(scenario, np.full(TALL_DISTANCES.shape, h_e))
        _place(scenario, "uma", 25.0, ut_h, TALL_DISTANCES, los)
        theirs = scenario.basic_pathloss.numpy()[0, 0]
        ours = pathloss_38901_db("uma", TALL_DISTANCES, carrier_ghz, los, 25.0, ut_h, np.full(6, h_e))
        assert np.max(np.abs(ours - theirs)) < TOLERANCE_DB, f"h_E {h_e}: ours {ours} vs Sionna {theirs}"


@pytest.mark.parametrize(("ut_h", "distance_m"), [(22.5, 300.0), (22.5, 1500.0), (19.5, 600.0)])
def test_tall_uma_environment_height_distribution_agrees_with_sionna(ut_h: float, distance_m: float) -> None:
    """An h_E whose d'_BP falls below d_2D gives its own LoS path loss level (the others share PL1): the levels'
    frequencies in Sionna's draws and ours agree within 5 standard errors of the difference of two binomial
    proportions (n = 4000 each)."""
    n = 4000
    d2d = np.full(n, distance_m)
    heights = np.array([1.0, *np.arange(12.0, ut_h - 1.5 + 1e-9, 3.0)])
    per_height = [pathloss_38901_db("uma", d2d[:1], 3.5, True, 25.0, ut_h, np.array([h]))[0] for h in heights]
    levels = np.unique(np.round(per_height, 6))
    assert levels.shape[0] >= 2  # the draw shows in the path loss here
    torch.manual_seed(0)
    scenario = _sionna_scenario("uma", 3.5)
    _place(scenario, "uma", 25.0, ut_h, d2d, True)
    theirs = scenario.basic_pathloss.numpy()[0, 0]
    h_e = draw_environment_height_m(np.random.default_rng(0), "uma", d2d, ut_h)
    ours = pathloss_38901_db("uma", d2d, 3.5, True, 25.0, ut_h, h_e)

    def frequencies(pathloss: np.ndarray) -> np.ndarray:
        nearest = np.abs(pathloss[:, None] - levels[None, :]).argmin(axis=1)
        assert np.abs(pathloss - levels[nearest]).max() < TOLERANCE_DB  # every draw is one of the levels
        return np.bincount(nearest, minlength=levels.shape[0]) / pathloss.shape[0]

    p_ours, p_theirs = frequencies(ours), frequencies(theirs)
    pooled = 0.5 * (p_ours + p_theirs)
    bound = 5.0 * np.sqrt(pooled * (1.0 - pooled) * 2.0 / n) + 1e-12
    assert np.all(np.abs(p_ours - p_theirs) <= bound), f"ours {p_ours} vs Sionna {p_theirs}"
    assert p_ours.min() > 0.005  # every level is drawn
