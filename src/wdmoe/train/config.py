"""What the training loop trains: the model's dimensions, the run's settings, and the presets (`shipped`, `tiny`).

The shipped model must fit `MAX_WEIGHT_BYTES` of weights; `save_dtype` picks fp32 when it fits and bf16 otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from transformers import MixtralConfig, MixtralForCausalLM

from wdmoe.train.tokenizer import DEFAULT_VOCAB_SIZE

MAX_WEIGHT_BYTES = 25_000_000  # the shipped checkpoint's weights, in bytes (25 MB)
DEVICES = ("cpu", "cuda")
BOS_ID, EOS_ID, PAD_ID = 0, 1, 2  # train_tokenizer gives SPECIAL_TOKENS the first ids, in order


@dataclass(frozen=True)
class ModelDims:
    vocab_size: int = DEFAULT_VOCAB_SIZE  # tokens, including <s>, </s>, <pad>
    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 6
    num_kv_heads: int = 2
    num_experts: int = 8  # routed experts per MoE layer
    top_k: int = 2  # experts per token
    intermediate_size: int = 224  # hidden units of one expert's FFN
    max_positions: int = 1024  # tokens; the RoPE context the model is built for
    router_aux_loss_coef: float = 0.02  # weight of the load-balancing loss added to the LM loss

    def mixtral_config(self) -> MixtralConfig:
        return MixtralConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads, num_local_experts=self.num_experts,
            num_experts_per_tok=self.top_k, max_position_embeddings=self.max_positions,
            output_router_logits=True, router_aux_loss_coef=self.router_aux_loss_coef, tie_word_embeddings=False,
            bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
        )


@dataclass(frozen=True)
class TrainConfig:
    model: ModelDims = field(default_factory=ModelDims)
    steps: int = 1000  # optimizer steps
    batch_size: int = 32  # sequences per step
    block_size: int = 256  # tokens per sequence
    lr: float = 3e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1  # on matrices only, not on norms
    grad_clip: float = 1.0  # max global gradient norm
    eval_every: int = 100  # steps between held-out evaluations (and checkpoints)
    eval_batches: int = 16  # batches of held-out blocks per evaluation (fewer if the held-out text is short)
    log_every: int = 10  # steps between recorded training losses
    seed: int = 0
    device: str = "cpu"  # "cpu" (fp32) or "cuda" (bf16 autocast)

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ValueError(f"device = {self.device!r}: choose one of {', '.join(DEVICES)}")
        for name in ("steps", "batch_size", "block_size", "eval_every", "eval_batches", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)}: must be at least 1")
        if self.block_size > self.model.max_positions:
            raise ValueError(
                f"block_size = {self.block_size} tokens exceeds the model's max_positions = {self.model.max_positions}"
            )
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps = {self.warmup_steps}: must lie in [0, steps = {self.steps})")
        if self.lr <= 0:
            raise ValueError(f"lr = {self.lr}: must be positive")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def shipped_config(**overrides: Any) -> TrainConfig:
    """The model wdmoe ships: hidden 192, 4 layers, 8 experts (top-2) of 224 units, vocab 4096; 6.1M parameters,
    24.4 MB in fp32 (so the shipped weights are exact fp32, and the split runtime matches HF on it exactly)."""
    return replace(TrainConfig(), **overrides)


def tiny_config(**overrides: Any) -> TrainConfig:
    """A model that trains in seconds on a CPU (tests): hidden 32, 2 layers, 8 experts of 64 units, vocab 320."""
    dims = ModelDims(vocab_size=320, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
                     max_positions=256)
    base = TrainConfig(model=dims, steps=40, batch_size=8, block_size=32, lr=1e-2, warmup_steps=4, eval_every=20,
                       eval_batches=2, log_every=1)
    return replace(base, **overrides)


EXPERT_VOCAB_SIZE = 1024  # the MoE² experts share one tokenizer, so their next-token distributions can be mixed


def _expert(dims: ModelDims, overrides: dict[str, Any]) -> TrainConfig:
    base = TrainConfig(model=dims, steps=600, batch_size=16, block_size=128, lr=3e-3, warmup_steps=50,
                       eval_every=50, eval_batches=8, log_every=10)
    return replace(base, **overrides)


def expert_small_config(**overrides: Any) -> TrainConfig:
    """A MoE² edge expert, dense (one FFN expert): hidden 64, 2 layers, FFN 256, vocab 1024; 0.26M parameters."""
    dims = ModelDims(vocab_size=EXPERT_VOCAB_SIZE, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     num_experts=1, top_k=1, intermediate_size=256, max_positions=256)
    return _expert(dims, overrides)


def expert_dense_config(**overrides: Any) -> TrainConfig:
    """A MoE² edge expert, dense: hidden 128, 3 layers, FFN 288, vocab 1024; 0.74M parameters (2.96 MB fp32)."""
    dims = ModelDims(vocab_size=EXPERT_VOCAB_SIZE, hidden_size=128, num_layers=3, num_heads=4, num_kv_heads=2,
                     num_experts=1, top_k=1, intermediate_size=288, max_positions=256)
    return _expert(dims, overrides)


def expert_moe_config(**overrides: Any) -> TrainConfig:
    """A MoE² edge expert, a tiny Mixtral: hidden 96, 2 layers, 4 experts (top-2) of 192; 0.70M parameters."""
    dims = ModelDims(vocab_size=EXPERT_VOCAB_SIZE, hidden_size=96, num_layers=2, num_heads=4, num_kv_heads=2,
                     num_experts=4, top_k=2, intermediate_size=192, max_positions=256)
    return _expert(dims, overrides)


PRESETS = {
    "shipped": shipped_config, "tiny": tiny_config, "expert-small": expert_small_config,
    "expert-dense": expert_dense_config, "expert-moe": expert_moe_config,
}


def build_model(dims: ModelDims, seed: int) -> MixtralForCausalLM:
    """A freshly initialized fp32 Mixtral of `dims` (the same weights for the same seed)."""
    torch.manual_seed(seed)
    return MixtralForCausalLM(dims.mixtral_config())


def count_parameters(dims: ModelDims) -> int:
    with torch.device("meta"):
        model = MixtralForCausalLM(dims.mixtral_config())
    return sum(p.numel() for p in model.parameters())


def save_dtype(num_parameters: int, limit_bytes: int = MAX_WEIGHT_BYTES) -> torch.dtype:
    """fp32 if the weights fit `limit_bytes` in fp32, else bf16; an error if not even bf16 fits."""
    for dtype in (torch.float32, torch.bfloat16):
        if num_parameters * dtype.itemsize <= limit_bytes:
            return dtype
    raise ValueError(
        f"{num_parameters:,} parameters need {num_parameters * 2 / 1e6:.1f} MB even in bf16, over the "
        f"{limit_bytes / 1e6:.1f} MB limit: shrink hidden_size, num_layers, num_experts or intermediate_size"
    )
