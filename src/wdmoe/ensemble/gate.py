"""MoE² gating network (papers.md §5.4, §5.8 step 3 [R]): φ(x) -> small MLP -> softmax restricted to a subset S.

Contract: `Gate.probs(embeddings, allowed)` returns g(x, θ; S), shape (I, N): for n in S,
g_n = exp(z_n) / Σ_{m∈S} exp(z_m) with z = MLP(φ(x)); g_n = 0 for n ∉ S (S = all experts when `allowed` is None).
`train_gate` fits θ by minimizing the mixture's cross-entropy −(1/|D|) Σ log Σ_{n∈S} g_n(x; S) p_n(y | x) with Adam
(lr 3e-3, batch 64, weight decay), keeping the epoch of lowest validation loss (early stopping). The p_n(y | x) it is
trained on are the experts' per-token option log-likelihoods at one shared, sharp ROUTE_TEMPERATURE (`routing_probs`),
not the calibrated, nearly flat ones the ensemble mixes: with those (τ_n ≈ 2-4) the mixture loss barely depends on
the routing and the gate collapsed onto the sharpest expert [R]. Trained once on the
full set, θ* is then restricted to any S (the optimality-preserving property, §5.6: an assumption we check, see
docs/ensemble.md). `save_gate` / `load_gate` round-trip through `gate.safetensors` + `gate.json`.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from wdmoe.atomic import write_atomic, write_json_atomic
from wdmoe.errors import WdmoeError

GATE_DIR = Path(__file__).resolve().parent.parent / "data" / "ensemble" / "gate"
ROUTE_TEMPERATURE = 0.15  # τ of the gate's training targets (0.05 / 0.15 / 0.4 tried on train+val; 0.15 kept)


@dataclass(frozen=True)
class GateConfig:
    input_dim: int = 384  # φ(x) size
    hidden: int = 64  # units of the MLP's hidden layer
    num_experts: int = 5
    lr: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 1e-2
    max_epochs: int = 400
    patience: int = 40  # epochs without a better validation loss before stopping
    seed: int = 0


def allowed_mask(allowed: Collection[int] | None, num_experts: int) -> torch.Tensor:
    """(N,) bool, True for the experts of S; every expert when `allowed` is None."""
    mask = torch.zeros(num_experts, dtype=torch.bool)
    if allowed is None:
        mask[:] = True
        return mask
    index = sorted(set(allowed))
    if not index or index[0] < 0 or index[-1] >= num_experts:
        raise WdmoeError(f"allowed experts {index}: give a nonempty subset of 0..{num_experts - 1}")
    mask[index] = True
    return mask


class Gate(nn.Module):
    def __init__(self, config: GateConfig, expert_names: tuple[str, ...]) -> None:
        super().__init__()
        if len(expert_names) != config.num_experts:
            raise WdmoeError(f"{len(expert_names)} expert names for a gate of {config.num_experts} experts")
        self.config, self.expert_names = config, expert_names
        self.mlp = nn.Sequential(
            nn.Linear(config.input_dim, config.hidden), nn.ReLU(), nn.Linear(config.hidden, config.num_experts)
        )

    def log_probs(self, embeddings: torch.Tensor, allowed: Collection[int] | None = None) -> torch.Tensor:
        """log g(x, θ; S), (I, N); -inf outside S."""
        logits = self.mlp(embeddings)  # (I, N)
        mask = allowed_mask(allowed, self.config.num_experts)
        return torch.log_softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)

    @torch.no_grad()
    def probs(self, embeddings: np.ndarray, allowed: Collection[int] | None = None) -> np.ndarray:
        """g(x, θ; S) as numpy, (I, N): rows sum to 1 over S, exactly 0 outside."""
        self.eval()
        return self.log_probs(torch.as_tensor(embeddings, dtype=torch.float32), allowed).exp().numpy()


def mixture_nll(
    gate: Gate, embeddings: torch.Tensor, answer_probs: torch.Tensor, allowed: Collection[int] | None = None
) -> torch.Tensor:
    """−mean_i log Σ_n g_n(x_i; S) p_n(y_i | x_i); answer_probs is (I, N), p_n of the right choice."""
    log_mix = torch.logsumexp(gate.log_probs(embeddings, allowed) + answer_probs.clamp(min=1e-30).log(), dim=-1)
    return -log_mix.mean()


@dataclass(frozen=True)
class GateFit:
    best_epoch: int
    train_loss: float  # nats, at best_epoch
    val_loss: float


def train_gate(
    expert_names: tuple[str, ...],
    train_x: np.ndarray,
    train_p: np.ndarray,
    val_x: np.ndarray,
    val_p: np.ndarray,
    allowed: Collection[int] | None = None,
    config: GateConfig | None = None,
) -> tuple[Gate, GateFit]:
    """Fit a gate on embeddings (I, 384) and answer probabilities (I, N) of every expert; see the module docstring."""
    cfg = config or GateConfig(num_experts=len(expert_names))
    torch.manual_seed(cfg.seed)
    gate = Gate(cfg, expert_names)
    optimizer = torch.optim.Adam(gate.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    x, p = torch.as_tensor(train_x, dtype=torch.float32), torch.as_tensor(train_p, dtype=torch.float32)
    vx, vp = torch.as_tensor(val_x, dtype=torch.float32), torch.as_tensor(val_p, dtype=torch.float32)
    generator = torch.Generator().manual_seed(cfg.seed)
    best: tuple[float, int, float, dict[str, torch.Tensor]] | None = None
    for epoch in range(cfg.max_epochs):
        gate.train()
        for batch in torch.randperm(len(x), generator=generator).split(cfg.batch_size):
            optimizer.zero_grad()
            mixture_nll(gate, x[batch], p[batch], allowed).backward()
            optimizer.step()
        with torch.no_grad():
            val = float(mixture_nll(gate, vx, vp, allowed))
            if best is None or val < best[0]:
                train = float(mixture_nll(gate, x, p, allowed))
                best = (val, epoch, train, {k: v.clone() for k, v in gate.state_dict().items()})
        if epoch - best[1] >= cfg.patience:
            break
    assert best is not None
    gate.load_state_dict(best[3])
    return gate, GateFit(best[1], best[2], best[0])


def save_gate(gate: Gate, directory: Path, fit: GateFit | None = None) -> None:
    """Write `gate.safetensors` then `gate.json` atomically (gate.json last: `load_gate` looks for it first)."""
    tensors = {k: v.contiguous() for k, v in gate.state_dict().items()}
    write_atomic(directory / "gate.safetensors", lambda tmp: save_file(tensors, tmp))
    meta = {"config": asdict(gate.config), "expert_names": list(gate.expert_names), "fit": asdict(fit) if fit else None}
    write_json_atomic(directory / "gate.json", meta)


def load_gate(directory: Path = GATE_DIR) -> Gate:
    if not (directory / "gate.json").is_file():
        raise WdmoeError(f"no gate in {directory}: run `wdmoe ensemble train-gate` first")
    meta = json.loads((directory / "gate.json").read_text(encoding="utf-8"))
    gate = Gate(GateConfig(**meta["config"]), tuple(meta["expert_names"]))
    gate.load_state_dict(load_file(directory / "gate.safetensors"))
    gate.eval()
    return gate
