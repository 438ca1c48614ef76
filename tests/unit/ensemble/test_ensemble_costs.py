"""ensemble.costs: one request worked out by hand, subset costs by hand, their monotonicity, and bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wdmoe.ensemble.costs import Category, LLMExpert, RequestCosts, request_costs, subset_delay_s, subset_energy_j
from wdmoe.radio.compute import PRESETS, DeviceProfile
from wdmoe.radio.link import LinkState

# Hand case: F = 2 * 5e5 = 1e6 FLOP/token, W = 5e5 * 2 = 1e6 bytes; server 1e9 FLOP/s, 1e9 B/s, no overhead,
# compute 10 W, tx 0.5 W; 1 MHz share, snr_dl 3e6/Hz -> 2 Mbit/s, snr_ul 1e6/Hz -> 1 Mbit/s; 1000 bits per token.
# Category: 10 prompt tokens, 3 answer tokens.
#   dl      = 10 * 1000 / 2e6                         = 5 ms
#   prefill = max(10 * 1e6 / 1e9, 1e6 / 1e9) + 0       = 10 ms
#   decode  = 3 * max(1e6 / 1e9, 1e6 / 1e9)            = 3 ms
#   ul      = 3 * 1000 / 1e6                           = 3 ms      -> delay 21 ms
#   energy  = 20 W * 5 ms + 10 W * 13 ms + 0.5 W * 3 ms = 0.1 + 0.13 + 0.0015 = 0.2315 J
HAND_SERVER = DeviceProfile("s", 1e9, 1e9, 1e9, 0.5, 10.0, 0.0)
HAND_EXPERT = LLMExpert("e", 5e5, HAND_SERVER, bytes_per_param=2.0)
HAND_LINK = LinkState(np.ones(1), np.zeros(1), np.ones(1), np.ones(1), np.array([3e6]), np.array([1e6]))


def test_one_request_by_hand() -> None:
    costs = request_costs(
        [HAND_EXPERT], [Category("c", 10, 3)], HAND_LINK, 1e6, bits_per_token=1000.0, bs_tx_power_w=20.0
    )

    np.testing.assert_allclose(costs.delay_s, [[0.021]], rtol=1e-12)
    np.testing.assert_allclose(costs.energy_j, [[0.2315]], rtol=1e-12)


def test_costs_grow_with_request_length_and_shrink_with_bandwidth() -> None:
    experts = [LLMExpert("small", 1.5e9, PRESETS["jetson-agx-orin"]), LLMExpert("big", 7e9, PRESETS["rtx4090-edge"])]
    categories = [Category("short", 50, 5), Category("long prompt", 500, 5), Category("long answer", 50, 200)]
    link = LinkState.uniform(2, snr_per_hz=1e12)

    narrow = request_costs(experts, categories, link, 1e6)
    wide = request_costs(experts, categories, link, 20e6)

    assert (narrow.delay_s[:, 1:] > narrow.delay_s[:, :1]).all()
    assert (narrow.energy_j[:, 1:] > narrow.energy_j[:, :1]).all()
    assert (wide.delay_s < narrow.delay_s).all()
    np.testing.assert_allclose(narrow.worst_case_energy_j(), narrow.energy_j.max(axis=1))


def test_subset_energy_by_hand() -> None:
    energy = np.array([1.0, 2.0, 3.0, 4.0])

    assert subset_energy_j(energy, {0, 2, 3}) == 8.0
    assert subset_energy_j(energy, {0, 2, 3}, top_k=2) == 7.0  # the two costliest members, 3 + 4
    assert subset_energy_j(energy, {0, 2, 3}, top_k=5) == 8.0
    assert subset_energy_j(energy, set()) == 0.0


def test_subset_delay_by_hand() -> None:
    delay = np.array([[1.0, 5.0], [3.0, 2.0], [2.0, 9.0]])  # (experts, categories)

    np.testing.assert_allclose(subset_delay_s(delay, {0, 1}), [3.0, 5.0])
    np.testing.assert_allclose(subset_delay_s(delay, {0, 1}, aggregation_s=0.5), [3.5, 5.5])
    np.testing.assert_allclose(subset_delay_s(delay, set(), aggregation_s=0.5), [0.0, 0.0])


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 8), st.integers(1, 3), st.integers(0, 2**32 - 1), st.sampled_from([None, 1, 2, 3]))
def test_subset_costs_are_monotone(n: int, categories: int, seed: int, top_k: int | None) -> None:
    rng = np.random.default_rng(seed)
    energy, delay = rng.exponential(1.0, n), rng.exponential(1.0, (n, categories))
    small = set(np.flatnonzero(rng.random(n) < 0.5).tolist())
    large = small | set(np.flatnonzero(rng.random(n) < 0.5).tolist())

    assert subset_energy_j(energy, small, top_k) <= subset_energy_j(energy, large, top_k)
    assert (subset_delay_s(delay, small, 0.1) <= subset_delay_s(delay, large, 0.1)).all()


def test_bad_inputs_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"prompt_tokens = -1 tokens"):
        Category("c", -1, 3)
    with pytest.raises(ValueError, match=r"params = 0"):
        LLMExpert("e", 0.0, HAND_SERVER)
    with pytest.raises(ValueError, match=r"energy_j has shape \(2,\)"):
        RequestCosts(("a", "b"), ("c",), np.ones((2, 1)), np.ones(2))
    with pytest.raises(ValueError, match=r"delay_s holds -1.0 s"):
        RequestCosts(("a",), ("c",), -np.ones((1, 1)), np.ones((1, 1)))
    with pytest.raises(ValueError, match=r"the link describes 1 servers, there are 2 experts"):
        request_costs([HAND_EXPERT, HAND_EXPERT], [Category("c", 1, 1)], HAND_LINK, 1e6)


def test_ensemble_imports_without_torch() -> None:
    code = (
        "import sys, wdmoe.ensemble, wdmoe.ensemble.costs, wdmoe.ensemble.selection, wdmoe.ensemble.baselines; "
        "print(sorted(m for m in ('torch', 'transformers', 'scipy') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "[]"
