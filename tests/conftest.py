"""Shared test factories: tiny random MoE models of every family, and their splits (no download, ever)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

FAMILIES = ("mixtral", "qwen2_moe", "olmoe", "qwen3_moe", "deepseek_v3")


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, object]:
    from wdmoe.model.tiny import tiny_model

    return {family: tiny_model(family, seed=7) for family in FAMILIES}


@pytest.fixture(scope="session")
def mixtral_split(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, object]) -> Path:
    """A tiny Mixtral split over 3 devices (read-only for tests: copy it before corrupting anything)."""
    from wdmoe.model.split import split_model

    out = tmp_path_factory.mktemp("mixtral") / "split"
    split_model(tiny_models["mixtral"], out, 3)
    return out
