"""The shared split model of the batched-step tests (test_batch, test_preempt): built once per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from wdmoe.runtime.model import DistributedMoE


@pytest.fixture(scope="module")
def model(mixtral_split: Path) -> Iterator[DistributedMoE]:
    model = DistributedMoE.from_pretrained(mixtral_split)
    yield model
    model.close()
