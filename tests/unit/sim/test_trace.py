"""Traces: the file round-trips bit for bit; synthesized routing has the popularity it was given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wdmoe.sim.synthesize import inclusion_probabilities, synthesize_trace, zipf_popularity
from wdmoe.sim.trace import DECODE, PREFILL, Trace, TraceError


def _small(with_logits: bool = True) -> Trace:
    return synthesize_trace(np.random.default_rng(3), num_layers=3, num_experts=6, top_k=2, num_requests=2,
                            prompt_len=4, new_tokens=3, popularity=1.0, num_devices=3, with_logits=with_logits)


@pytest.mark.parametrize("with_logits", [True, False])
def test_save_load_round_trip_is_exact(tmp_path: Path, with_logits: bool) -> None:
    trace = _small(with_logits)

    loaded = Trace.load(trace.save(tmp_path / "t.npz"))

    assert (loaded.model, loaded.num_devices, loaded.num_experts, loaded.top_k) == (
        trace.model, trace.num_devices, trace.num_experts, trace.top_k)
    assert loaded.costs == trace.costs
    for name in ("layers", "expert_device", "step_phase", "step_tokens", "step_request", "topk_index"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(trace, name))
    assert loaded.topk_index.dtype == np.int64  # stored narrower, handed to policies as the runtime's int64
    assert loaded.topk_weight.dtype == np.float32
    assert loaded.topk_weight.tobytes() == trace.topk_weight.tobytes()
    if with_logits:
        assert loaded.logits is not None and trace.logits is not None
        assert loaded.logits.tobytes() == trace.logits.tobytes()
    else:
        assert loaded.logits is None


def test_layout_rows_and_requests() -> None:
    trace = _small()

    assert trace.num_steps == 6 and trace.num_requests == 2
    np.testing.assert_array_equal(trace.step_phase, [PREFILL, DECODE, DECODE] * 2)
    np.testing.assert_array_equal(trace.step_tokens, [4, 1, 1] * 2)
    assert trace.num_decisions == (4 + 1 + 1) * 2 * 3
    assert trace.rows(1, 2) == slice(12 + 2, 12 + 3)  # step 0 has 3 layers x 4 tokens


def test_logits_reproduce_the_weights_through_softmax_over_topk() -> None:
    trace = _small()
    assert trace.logits is not None

    top = np.take_along_axis(trace.logits.astype(float), trace.topk_index, axis=1)
    weights = np.exp(top) / np.exp(top).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(weights, trace.topk_weight, rtol=1e-5)
    assert (np.argsort(-trace.logits, axis=1)[:, :2] == trace.topk_index).all()


def test_weights_sum_to_one_and_decrease() -> None:
    trace = _small()

    np.testing.assert_allclose(trace.topk_weight.sum(axis=1), 1.0, rtol=1e-6)
    assert (np.diff(trace.topk_weight, axis=1) <= 0).all()
    assert (np.diff(np.sort(trace.topk_index, axis=1), axis=1) > 0).all()  # k distinct experts per token


def test_inclusion_probabilities_cap_at_one_and_sum_to_k() -> None:
    p = zipf_popularity(8, 2.0)

    pi = inclusion_probabilities(p, 2)

    assert pi.sum() == pytest.approx(2.0)
    assert pi.max() == 1.0  # expert 0 would need 1.3 > 1: it is in every token's top-2
    free = pi < 1.0
    np.testing.assert_allclose(pi[free] / pi[free].sum(), p[free] / p[free].sum())  # the rest stay proportional


@pytest.mark.parametrize("popularity", [0.0, 1.2, np.array([5.0, 1.0, 1.0, 3.0, 0.5, 2.0])])
def test_synthesized_routing_has_the_given_popularity(popularity: float | np.ndarray) -> None:
    trace = synthesize_trace(np.random.default_rng(11), num_layers=4, num_experts=6, top_k=2, num_requests=40,
                             prompt_len=50, new_tokens=51, popularity=popularity, num_devices=3)
    p = popularity if isinstance(popularity, np.ndarray) else zipf_popularity(6, popularity)
    pi = inclusion_probabilities(p, 2)
    rows = trace.topk_index.shape[0]  # 16,000 independent tokens

    freq = np.bincount(trace.topk_index.ravel(), minlength=6) / rows

    # Each expert's count is a sum of `rows` independent Bernoulli(pi_e): 5 standard deviations bound each of the
    # 6 frequencies, so a correct sampler fails this with probability < 6 * 6e-7.
    sigma = np.sqrt(pi * (1.0 - pi) / rows)
    assert (np.abs(freq - pi) <= 5.0 * sigma + 1e-12).all(), (freq, pi)


def test_popularity_errors_say_why() -> None:
    with pytest.raises(ValueError, match="top_k = 3"):
        inclusion_probabilities(np.array([1.0, 1.0, 0.0, 0.0]), 3)
    with pytest.raises(ValueError, match="one per expert"):
        synthesize_trace(np.random.default_rng(0), 2, 4, 2, 1, 2, 2, popularity=np.ones(3))


def test_load_refuses_other_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a trace")

    with pytest.raises(TraceError, match="not a wdmoe trace"):
        Trace.load(bad)
