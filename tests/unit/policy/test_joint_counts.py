"""The joint policy's count search (policy.joint_counts): its memoised metric is the metric."""

from __future__ import annotations

import numpy as np
import pytest

from tests.unit.policy.states import random_state
from wdmoe.policy import JointSelectionBandwidth
from wdmoe.policy.joint_counts import CountSearch, improve_counts, search_counts
from wdmoe.radio.link import DownlinkPower


@pytest.mark.parametrize("seed", range(6))
def test_the_memoised_metric_equals_a_fresh_evaluation_on_every_count_vector(seed: int) -> None:
    state = random_state(seed, num_tokens=24, downlink=(DownlinkPower.SHARED_PSD, DownlinkPower.FULL_PER_DEVICE)[
        seed % 2])
    rule = JointSelectionBandwidth()
    search = CountSearch(rule, state)
    rng = np.random.default_rng(seed)
    xs = [rng.integers(0, search.top + 1) for _ in range(20)]

    memoised = [search.metric(x) for x in xs + xs[::-1]]  # every x twice: the second time from the memo
    fresh = [CountSearch(rule, state).metric(x) for x in xs + xs[::-1]]

    assert repr(memoised) == repr(fresh)  # repr: the same floats bit for bit, -inf included
    assert len(search.known) == len({tuple(x.tolist()) for x in xs})


class Unmemoised(CountSearch):
    """The search as it was: every candidate evaluated afresh."""

    def metric(self, x: np.ndarray) -> float:
        return self._metric(x)


class Counting(CountSearch):
    """The memoised search, counting the candidates asked."""

    calls = 0

    def metric(self, x: np.ndarray) -> float:
        self.calls += 1
        return super().metric(x)


@pytest.mark.parametrize("seed", range(4))
def test_the_search_ends_where_it_ended_without_the_memo(seed: int) -> None:
    state = random_state(seed, num_tokens=32, downlink=DownlinkPower.SHARED_PSD)
    rule = JointSelectionBandwidth()
    keep = np.ones(state.topk_index.shape, dtype=bool)
    memoised = Counting(rule, state)

    result = search_counts(memoised, keep)

    assert np.array_equal(result, search_counts(Unmemoised(rule, state), keep))
    assert np.array_equal(result, improve_counts(rule, state, keep))
    assert memoised.calls > len(memoised.known)  # the search stepped back onto candidates: the memo answered
