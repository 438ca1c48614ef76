"""Perception, part 2: what a model needs (`ModelRequirement`), per (layer, expert) and per bit width.

Contract: a `ModelRequirement` holds the bytes of every routed expert at each bit width in `BIT_WIDTHS`, the
backbone's bytes, the FLOPs of one expert on one token, and each expert's popularity and importance from a
calibration run (`wdmoe.plan.calibrate`, papers.md §4.2 [V: servers broadcast the LLMs' requirements], §4.4 [R]):

    popularity[l, e] = share of calibration tokens whose top-k at layer l includes e   (rows sum to top_k)
    importance[l, e] = mean router combine weight of e over the tokens routed to it    (0 if none)

A bit-width assignment is an (L, E) int array of values in `BIT_WIDTHS`; `default_bits()` keeps the model's dtype.
Compression (quantization) plugs in by passing its own assignment, or by replacing `expert_bytes` with measured
sizes (scales and zero points included) through `dataclasses.replace`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from wdmoe.plan.errors import PlanError
from wdmoe.radio.compute import dense_flops_per_token

BIT_WIDTHS = (32, 16, 8, 4)


def bytes_at(params: int, bits: int) -> int:
    """Bytes of `params` weights at `bits` bits each, rounded up to a whole byte."""
    return -(-params * bits // 8)


@dataclass(frozen=True, eq=False)
class ModelRequirement:
    """The resources one MoE model needs.

    Attributes:
        model_id: a label (the model directory).
        moe_layers: the decoder-layer indices of the L MoE layers.
        num_experts: E routed experts per MoE layer. top_k: experts per token.
        hidden_size: H, values per token on the air.
        dtype_bits: bits of one weight as the model is stored (32 for fp32, 16 for bf16).
        expert_params: weights of one routed expert. non_expert_params: every other weight (the BS's).
        expert_flops_per_token: FLOPs of one expert on one token (2 per matrix weight, 1 per bias element).
        popularity, importance: (L, E), module docstring. calibration_tokens: tokens they were measured on
            (0: no calibration, popularity uniform).
        expert_bytes: {bits: (L, E) bytes of each expert at that width}, for every width in BIT_WIDTHS.
    """

    model_id: str
    moe_layers: tuple[int, ...]
    num_experts: int
    top_k: int
    hidden_size: int
    dtype_bits: int
    expert_params: int
    non_expert_params: int
    expert_flops_per_token: float
    popularity: np.ndarray
    importance: np.ndarray
    expert_bytes: Mapping[int, np.ndarray]
    calibration_tokens: int = 0

    @classmethod
    def build(
        cls,
        model_id: str,
        moe_layers: tuple[int, ...],
        num_experts: int,
        top_k: int,
        hidden_size: int,
        dtype_bits: int,
        expert_params: int,
        non_expert_params: int,
        popularity: np.ndarray | None = None,
        importance: np.ndarray | None = None,
        calibration_tokens: int = 0,
        expert_flops_per_token: float | None = None,
    ) -> ModelRequirement:
        """A requirement with bytes at every width computed from the parameter count; uniform popularity
        (top_k / E) and importance (1 / top_k) when none is measured; one expert's FLOPs per token as given (from
        its real tensors, `wdmoe.model.moe_shape`), else 2 per parameter."""
        shape = (len(moe_layers), num_experts)
        pop = np.full(shape, top_k / num_experts) if popularity is None else np.asarray(popularity, dtype=float)
        imp = np.full(shape, 1.0 / top_k) if importance is None else np.asarray(importance, dtype=float)
        sizes = {bits: np.full(shape, bytes_at(expert_params, bits), dtype=np.int64) for bits in BIT_WIDTHS}
        return cls(
            model_id,
            tuple(moe_layers),
            num_experts,
            top_k,
            hidden_size,
            dtype_bits,
            expert_params,
            non_expert_params,
            dense_flops_per_token(expert_params) if expert_flops_per_token is None else float(expert_flops_per_token),
            pop,
            imp,
            sizes,
            calibration_tokens,
        )

    def __post_init__(self) -> None:
        shape = (len(self.moe_layers), self.num_experts)
        for name, array in (
            ("popularity", self.popularity),
            ("importance", self.importance),
            *((f"expert_bytes[{b}]", a) for b, a in self.expert_bytes.items()),
        ):
            if np.shape(array) != shape:
                raise PlanError(
                    f"model requirement field {name!r} has shape {np.shape(array)}; expected (L, E) = {shape}"
                )
        missing = [b for b in BIT_WIDTHS if b not in self.expert_bytes]
        if missing:
            raise PlanError(f"model requirement lists no expert bytes at {missing} bits; give {list(BIT_WIDTHS)}")
        if not 1 <= self.top_k <= self.num_experts:
            raise PlanError(f"top_k = {self.top_k}: must be in 1..num_experts = {self.num_experts}")

    @property
    def num_layers(self) -> int:
        return len(self.moe_layers)

    @property
    def non_expert_bytes(self) -> int:
        """The backbone (embeddings, attention, norms, routers, head) at the model's dtype, bytes."""
        return bytes_at(self.non_expert_params, self.dtype_bits)

    def default_bits(self) -> np.ndarray:
        """(L, E) the model's own dtype for every expert."""
        return np.full((self.num_layers, self.num_experts), self.dtype_bits, dtype=np.int64)

    def check_bits(self, bits: np.ndarray | None) -> np.ndarray:
        """`bits` as an (L, E) int array (the default when None); refuses widths outside BIT_WIDTHS."""
        if bits is None:
            return self.default_bits()
        array = np.broadcast_to(np.asarray(bits, dtype=np.int64), (self.num_layers, self.num_experts)).copy()
        bad = sorted(set(np.unique(array).tolist()) - set(BIT_WIDTHS))
        if bad:
            raise PlanError(f"bit width {bad[0]} bits is not supported; choose from {list(BIT_WIDTHS)}")
        return array

    def bytes_for(self, bits: np.ndarray | None = None) -> np.ndarray:
        """(L, E) int64 bytes of each expert at its assigned width."""
        widths = self.check_bits(bits)
        out = np.zeros(widths.shape, dtype=np.int64)
        for b in BIT_WIDTHS:
            out = np.where(widths == b, np.asarray(self.expert_bytes[b]), out)
        return out
