"""Fixtures of the fault-injection suite: the serving tests' tiny Mixtral (character tokenizer) split over 3
devices, round robin or with every expert on two devices, served through a pool whose devices tests kill."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.faults.pools import KillablePool
from tests.integration.serve.conftest import NUM_DEVICES
from wdmoe.backends.local import LocalDevicePool
from wdmoe.model.shards import Manifest
from wdmoe.placement import Placement
from wdmoe.runtime.model import DistributedMoE
from wdmoe.runtime.telemetry import StepRecord


def _split(hf_dir: Path, out: Path, placement: Placement | None) -> Path:
    from wdmoe.model.split import load_hf_model, split_model

    split_model(load_hf_model(hf_dir), out, NUM_DEVICES, placement, hf_dir)
    return out


@pytest.fixture(scope="session")
def round_robin_split(tmp_path_factory: pytest.TempPathFactory, text_model_dir: Path) -> Path:
    """Expert e on device e mod 3 only: a dead device's experts have no replica."""
    return _split(text_model_dir, tmp_path_factory.mktemp("rr") / "split", None)


@pytest.fixture(scope="session")
def replicated_text_split(tmp_path_factory: pytest.TempPathFactory, text_model_dir: Path) -> Path:
    """Expert e on devices e mod 3 and e+1 mod 3: one dead device loses no expert, two lose the last replicas."""
    row = tuple((e % NUM_DEVICES, (e + 1) % NUM_DEVICES) for e in range(8))
    placement = Placement(NUM_DEVICES, 8, {0: row, 1: row})
    return _split(text_model_dir, tmp_path_factory.mktemp("replicated") / "split", placement)


def killable_model(split: Path) -> tuple[DistributedMoE, KillablePool]:
    pool = KillablePool(LocalDevicePool(split, Manifest.read(split)))
    model = DistributedMoE.from_pretrained(split, pool=pool)
    model.runtime.rejoin_interval_s = 0.05
    return model, pool


@pytest.fixture()
def killable(round_robin_split: Path) -> Iterator[tuple[DistributedMoE, KillablePool]]:
    model, pool = killable_model(round_robin_split)
    yield model, pool
    model.close()


def at_step(model: DistributedMoE, step: int, action: Callable[[], None]) -> None:
    """Call `action()` once, when forward step `step` (0: the prefill) of the next request has finished."""
    seen = [0]

    def listener(_record: StepRecord) -> None:
        seen[0] += 1
        if seen[0] == step + 1:
            model.telemetry.listeners.remove(listener)
            action()

    model.telemetry.listeners.append(listener)
