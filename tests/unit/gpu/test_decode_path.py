"""The decode path of the devices and the runtime: CUDA graphs stay off on the CPU (where the worker's output is
the eager FFN's, bit for bit), and the runtime's one-token grouping (`wdmoe.runtime.grouping.ONE_TOKEN`) combines
exactly like the reference for every way k assignments can fall on the devices (other devices' order, one device
holding several)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from wdmoe.backends.base import DeviceBatch
from wdmoe.backends.local import LocalDevicePool
from wdmoe.backends.worker import CUDA_GRAPHS_ENV, ExpertWorker
from wdmoe.model.expert import expert_ffn
from wdmoe.model.shards import Manifest
from wdmoe.runtime.grouping import ONE_TOKEN
from wdmoe.runtime.layer_step import Runtime


@pytest.mark.parametrize("asked", [None, True, False])
def test_cpu_workers_never_use_cuda_graphs_and_answer_the_eager_ffn(mixtral_split: Path, asked) -> None:
    manifest = Manifest.read(mixtral_split)
    worker = ExpertWorker(mixtral_split, manifest, 0, cuda_graphs=asked)
    layer, expert = next(iter(worker.weights))
    gate_up, down = worker.weights[(layer, expert)]
    x = torch.randn(1, gate_up.shape[1], generator=torch.Generator().manual_seed(0))

    out = worker.run(DeviceBatch(0, layer, x, torch.zeros(1, dtype=torch.long), torch.tensor([expert]))).output

    assert worker.cuda_graphs is False and worker.graphed == ()
    assert torch.equal(out, expert_ffn(x, gate_up, down, worker.act))


def test_cuda_graphs_default_follows_the_environment(mixtral_split: Path, monkeypatch) -> None:
    manifest = Manifest.read(mixtral_split)
    worker = ExpertWorker(mixtral_split, manifest, 0)  # on the CPU: off whatever the environment says
    monkeypatch.setenv(CUDA_GRAPHS_ENV, "1")
    assert ExpertWorker(mixtral_split, manifest, 0).cuda_graphs is False
    assert worker.cuda_graphs is False
    # the decision itself, for a CUDA device (decided before anything loads: no GPU needed)
    assert ExpertWorker.graphs_wanted("cuda", None) is True
    assert ExpertWorker.graphs_wanted("cuda:1", False) is False
    assert ExpertWorker.graphs_wanted("cpu", True) is False
    monkeypatch.setenv(CUDA_GRAPHS_ENV, "0")
    assert ExpertWorker.graphs_wanted("cuda", None) is False
    assert ExpertWorker.graphs_wanted("cuda", True) is True  # an explicit argument wins


@pytest.mark.parametrize("k", [1, 2, 3])
def test_one_token_grouping_equals_the_reference_bit_for_bit(mixtral_split: Path, k: int) -> None:
    manifest = Manifest.read(mixtral_split)
    placement = manifest.placement
    runtime = Runtime(LocalDevicePool(mixtral_split, manifest), placement)
    layer = placement.moe_layers[0]
    table = placement.primary_table(layer)
    gen = torch.Generator().manual_seed(1)
    hidden_size = next(iter(ExpertWorker(mixtral_split, manifest, 0).weights.values()))[0].shape[1]
    hidden = torch.randn(1, hidden_size, generator=gen)
    shapes = set()
    for experts in itertools.permutations(range(placement.num_experts), k):
        index = torch.tensor([experts])
        weight = torch.rand(1, k, generator=gen)
        runtime.decode_grouping = ONE_TOKEN
        fast = runtime.run(layer, hidden, index, weight, None)
        runtime.decode_grouping = None  # the reference grouping and combine
        general = runtime.run(layer, hidden, index, weight, None)
        assert torch.equal(fast, general), experts
        devices = [int(table[e]) for e in experts]
        shapes.add((len(set(devices)), devices == sorted(devices)))
    # every branch of the decode combine's reordering was taken: one device, one per device in and out of k order
    if k == 1:
        assert shapes == {(1, True)}
    elif k == 2:
        assert shapes == {(1, True), (2, True), (2, False)}
    else:
        assert {n for n, _ in shapes} >= {2, 3} and {s for _, s in shapes} == {True, False}


@pytest.mark.parametrize("rows", [1, 127, 128, 300])
def test_expert_ffn_on_the_cpu_is_the_fused_gate_up_arithmetic_at_every_size(rows: int) -> None:
    gen = torch.Generator().manual_seed(rows)
    x, gate_up, down = (torch.randn(*s, generator=gen) for s in ((rows, 16), (2 * 24, 16), (16, 24)))

    gate, up = torch.nn.functional.linear(x, gate_up).chunk(2, dim=-1)  # transformers' eager experts
    expected = torch.nn.functional.linear(torch.nn.functional.silu(gate) * up, down)

    assert torch.equal(expert_ffn(x, gate_up, down, torch.nn.functional.silu), expected)
