"""Synthetic router traces with a given expert popularity, for simulations at a scale no recording reaches.

Contract: `synthesize_trace(rng, ...)` returns a `Trace` whose routing is independent across tokens and layers.
Expert e of every layer is routed for a token with probability pi_e (its *inclusion probability*), where

    pi = min(1, c * p),   c such that sum_e pi_e = k            (p: the popularity, normalised)

so the fraction of routed slots that go to e is pi_e / k, proportional to p_e until an expert would have to be in
every token's top-k. Each token's k distinct experts come from systematic sampling (Madow 1949) over a random
order of the experts, which realises these inclusion probabilities exactly. The k weights are a Dirichlet draw
sorted in decreasing order (the router's order), so they sum to 1 as Mixtral's softmax-over-top-k weights do.
A request is one prefill step of `prompt_len` tokens and `new_tokens - 1` one-token decode steps, as
`generate(max_new_tokens=new_tokens)` runs. Pure numpy.
"""

from __future__ import annotations

import numpy as np

from wdmoe.placement import Placement
from wdmoe.radio.costs import ModelCosts
from wdmoe.radio.exactmath import log_array
from wdmoe.sim.trace import DECODE, PREFILL, Trace


def zipf_popularity(num_experts: int, exponent: float) -> np.ndarray:
    """p_e proportional to 1 / (e + 1)^exponent (expert 0 the most popular); exponent 0 is uniform."""
    if exponent < 0.0:
        raise ValueError(f"Zipf exponent = {exponent}: must be >= 0 (0 is uniform popularity)")
    p = 1.0 / np.arange(1, num_experts + 1, dtype=float) ** exponent
    return p / p.sum()


def inclusion_probabilities(popularity: np.ndarray, top_k: int) -> np.ndarray:
    """(E,) pi = min(1, c p) with sum pi = k (module docstring), by water-filling the capped experts."""
    p = np.asarray(popularity, dtype=float)
    if p.ndim != 1 or (p < 0.0).any() or not np.isfinite(p).all():
        raise ValueError("popularity must be a 1-D array of finite values >= 0, one per expert")
    if np.count_nonzero(p) < top_k:
        raise ValueError(f"popularity gives {np.count_nonzero(p)} experts a nonzero share; top_k = {top_k} "
                         "distinct experts per token need at least that many")
    pi = np.zeros_like(p)
    capped = np.zeros(p.shape, dtype=bool)
    for _ in range(p.shape[0]):
        free = ~capped
        pi[free] = p[free] * (top_k - capped.sum()) / p[free].sum()
        over = free & (pi > 1.0)
        if not over.any():
            break
        capped |= over
        pi[capped] = 1.0
    return pi


def sample_topk(rng: np.random.Generator, pi: np.ndarray, num_tokens: int, top_k: int) -> np.ndarray:
    """(T, k) distinct experts per token, expert e included with probability pi_e (systematic sampling)."""
    num_experts = pi.shape[0]
    order = np.argsort(rng.random((num_tokens, num_experts)), axis=1)  # (T, E) a random order per token
    edges = np.cumsum(pi[order], axis=1)  # (T, E) right ends of the experts' intervals on [0, k)
    points = rng.random((num_tokens, 1)) + np.arange(top_k)  # (T, k) one start, then spaced by 1
    slot = (edges[:, None, :] <= points[:, :, None]).sum(axis=2)  # (T, k) which interval holds each point
    return np.take_along_axis(order, np.minimum(slot, num_experts - 1), axis=1)


def mixtral_like_costs(num_layers: int, num_experts: int, hidden_size: int = 4096,
                       intermediate_size: int = 14336, kv_fraction: float = 0.25,
                       bytes_per_param: float = 2.0) -> ModelCosts:
    """ModelCosts of a Mixtral-8x7B-shaped model (bf16): per layer, the BS holds attention (q and o of H x H,
    k and v of H x kv_fraction H), the router (H x E) and two norms."""
    attention = 2.0 * hidden_size * hidden_size + 2.0 * hidden_size * hidden_size * kv_fraction
    per_layer = attention + hidden_size * num_experts + 2.0 * hidden_size
    return ModelCosts.gated(hidden_size, intermediate_size, bytes_per_param,
                            dict.fromkeys(range(num_layers), per_layer))


def synthesize_trace(rng: np.random.Generator, num_layers: int, num_experts: int, top_k: int, num_requests: int,
                     prompt_len: int, new_tokens: int, popularity: float | np.ndarray = 0.0, num_devices: int = 8,
                     concentration: float = 1.0, costs: ModelCosts | None = None,
                     with_logits: bool = False) -> Trace:
    """A synthetic Trace (module docstring).

    Args:
        popularity: a Zipf exponent (float; 0 = uniform), or explicit (E,) expert popularities.
        concentration: the Dirichlet parameter of the k weights (1 = uniform on the simplex).
        costs: the model's costs; default `mixtral_like_costs`.
        with_logits: also store (T, E) logits whose softmax over the top-k gives the weights.
    Placement: expert e of every layer on device e mod num_devices.
    """
    for name, value in (("num_layers", num_layers), ("num_requests", num_requests), ("prompt_len", prompt_len),
                        ("new_tokens", new_tokens), ("top_k", top_k)):
        if value < 1:
            raise ValueError(f"{name} = {value}: must be >= 1")
    if top_k > num_experts:
        raise ValueError(f"top_k = {top_k} exceeds num_experts = {num_experts}")
    p = zipf_popularity(num_experts, float(popularity)) if np.ndim(popularity) == 0 else np.asarray(popularity)
    if p.shape != (num_experts,):
        raise ValueError(f"popularity has {p.shape[0]} entries; give one per expert ({num_experts})")
    pi = inclusion_probabilities(p, top_k)
    step_tokens = np.tile(np.r_[prompt_len, np.ones(new_tokens - 1, dtype=np.int64)], num_requests)
    step_phase = np.tile(np.r_[PREFILL, np.full(new_tokens - 1, DECODE)], num_requests)
    step_request = np.repeat(np.arange(num_requests), new_tokens)
    rows = int(step_tokens.sum()) * num_layers
    index = sample_topk(rng, pi, rows, top_k)  # (N, k); rows are independent, so their order is immaterial
    weight = -np.sort(-rng.dirichlet(np.full(top_k, concentration), size=rows), axis=1)  # (N, k) decreasing
    logits = None
    if with_logits:
        log_w = log_array(np.maximum(weight, 1e-30))
        floor = log_w.min(axis=1, keepdims=True) - 1e-3 - rng.exponential(1.0, size=(rows, num_experts))
        logits = floor.copy()
        np.put_along_axis(logits, index, log_w, axis=1)
        logits = logits.astype(np.float32)
    placement = Placement.round_robin(range(num_layers), num_experts, num_devices)
    table = np.stack([placement.primary_table(layer) for layer in range(num_layers)])
    label = f"synthetic L={num_layers} E={num_experts} k={top_k} popularity={np.round(p, 4).tolist()}"
    return Trace(label, num_devices, num_experts, top_k, np.arange(num_layers, dtype=np.int64),
                 costs or mixtral_like_costs(num_layers, num_experts), table, step_phase.astype(np.int64),
                 step_tokens.astype(np.int64), step_request.astype(np.int64), index.astype(np.int64),
                 weight.astype(np.float32), logits)
