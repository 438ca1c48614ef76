"""One routed expert's FFN, the same math as transformers' eager experts (gated: act(x W_g) * (x W_u), then W_d)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F


def expert_ffn(
    hidden: torch.Tensor,  # (n, H)
    gate_up_proj: torch.Tensor,  # (2I, H)
    down_proj: torch.Tensor,  # (H, I)
    act: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:  # (n, H)
    gate, up = F.linear(hidden, gate_up_proj).chunk(2, dim=-1)  # (n, I) each
    return F.linear(act(gate) * up, down_proj)
