"""WLR and the joint policy on a sigmoid-routing family (DeepSeek-V3) and a shared-expert family (Qwen2-MoE).

The semantics (docs/families.md): a policy masks and re-weights the routed experts only; the kept weights are
renormalised to the token's original routed total, which for DeepSeek-V3 is `routed_scaling_factor` (2.5 here,
after norm_topk_prob), not 1, and for Qwen2-MoE without norm_topk_prob is the top-k softmax mass (< 1); shared
experts are never part of the decision (they stay at the BS and always run).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wdmoe import DistributedMoE
from wdmoe.model.split import split_model
from wdmoe.policy.factory import make_policy


@pytest.fixture(scope="module")
def splits(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for family in ("deepseek_v3", "qwen2_moe"):
        out[family] = tmp_path_factory.mktemp(family) / "split"
        split_model(tiny_models[family], out[family], 4)
    return out


@pytest.mark.parametrize("family", ["deepseek_v3", "qwen2_moe"])
@pytest.mark.parametrize("policy", ["wlr", "joint"])
def test_policy_runs_and_keeps_each_tokens_routed_total(splits: dict[str, Path], family: str, policy: str) -> None:
    model = DistributedMoE.from_pretrained(splits[family], policy=make_policy(policy, theta=1.0))
    ids = torch.arange(3, 19).unsqueeze(0)
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all()
    records = [rec for step in model.steps for rec in step.layers]
    assert records and {rec.layer for rec in records} == set(model.placement.moe_layers)
    for rec in records:
        total = rec.topk_weight.sum(axis=1)  # (T,) the router's routed total
        kept = np.where(rec.keep, rec.weight, 0.0).sum(axis=1)
        np.testing.assert_allclose(kept, total, rtol=1e-5)
        assert rec.keep.any(axis=1).all()
        if family == "deepseek_v3":  # norm_topk_prob then routed_scaling_factor: the total is the factor
            np.testing.assert_allclose(total, model.config.routed_scaling_factor, rtol=1e-5)
        else:  # softmax top-k mass, not renormalised (norm_topk_prob False)
            assert (total < 1.0).all()
    if policy == "wlr":  # theta = 1 keeps exactly one routed expert per token
        assert all((rec.keep.sum(axis=1) == 1).all() for rec in records)


@pytest.mark.parametrize("family", ["deepseek_v3", "qwen2_moe"])
def test_wlr_at_theta_0_is_the_models_own_topk(splits: dict[str, Path], tiny_models, family: str) -> None:
    model = DistributedMoE.from_pretrained(splits[family], policy=make_policy("wlr", theta=0.0))
    ids = torch.arange(3, 19).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, tiny_models[family](ids).logits, rtol=0, atol=1e-5)
