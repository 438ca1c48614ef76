"""Quantized splits: shards really hold int8 / packed int4, checksums guard them, accuracy stays within bounds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from wdmoe import DistributedMoE
from wdmoe.errors import ShardError
from wdmoe.eval.language import LanguageScores, language_scores
from wdmoe.model import shipped
from wdmoe.model.shards import Manifest
from wdmoe.model.split import load_hf_model, split_model

# The bounds the shipped model keeps on its first ~1,000 held-out tokens (docs/compression.md has full runs).
INT8_PPL_BOUND = 0.02  # held-out perplexity at most +2 %
INT4_PPL_BOUND = 0.04  # measured +1.2 % on this slice, +1.0 % on 19.6k tokens; bound +4 %
ACCURACY_DROP_BOUND = 0.02  # next-token accuracy at most 2 points lower


def _shard_dtypes(root: Path, device: int) -> set[str]:
    with safe_open(str(root / "devices" / f"device-{device}.safetensors"), "pt") as f:
        return {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)


def test_quantized_split_stores_integers_and_records_widths(tmp_path: Path, tiny_models: dict) -> None:
    model = tiny_models["mixtral"]
    split_model(model, tmp_path / "q", 2, bits={(0, 0): 4, (0, 1): 8, (1, 2): 16})
    manifest = Manifest.read(tmp_path / "q")
    assert manifest.quantization is not None
    assert manifest.quantization.bits == {(0, 0): 4, (0, 1): 8, (1, 2): 16}
    assert manifest.expert_bits(0, 0) == 4 and manifest.expert_bits(1, 1) is None
    assert _shard_dtypes(tmp_path / "q", 0) == {"U8", "F32", "F16"}  # experts 0, 2, 4, 6: int4, fp16 (1:2), fp32
    assert _shard_dtypes(tmp_path / "q", 1) == {"I8", "F32"}  # experts 1, 3, 5, 7: int8 (0:1) and fp32


def test_whole_split_at_8_and_4_bits_shrinks_the_shards(tmp_path: Path, tiny_models: dict) -> None:
    sizes = {}
    for bits in (None, 8, 4):
        root = tmp_path / f"b{bits}"
        split_model(tiny_models["mixtral"], root, 2, bits=bits)
        sizes[bits] = sum(p.stat().st_size for p in (root / "devices").iterdir())
    assert sizes[8] < sizes[None] / 3.3 and sizes[4] < sizes[None] / 5.0  # scales and headers cost the rest


def test_corrupt_quantized_shard_is_refused(tmp_path: Path, tiny_models: dict) -> None:
    split_model(tiny_models["mixtral"], tmp_path / "q", 2, bits=4)
    shard = tmp_path / "q" / "devices" / "device-1.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x01  # one bit of the last int4 / scale bytes
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="checksum mismatch for devices/device-1"):
        DistributedMoE.from_pretrained(tmp_path / "q")


def test_quantized_tiny_model_runs_close_to_the_original(tmp_path: Path, tiny_models: dict) -> None:
    ids = torch.tensor([[3, 17, 5, 99, 42, 7, 8]])
    with torch.no_grad():
        reference = tiny_models["mixtral"](ids).logits
    split_model(tiny_models["mixtral"], tmp_path / "q", 3, bits=8)
    model = DistributedMoE.from_pretrained(tmp_path / "q")
    assert sum(w.num_experts_held for w in model.pool.workers) == 16
    logits = model(ids).logits
    assert torch.allclose(logits, reference, atol=0.05) and not torch.equal(logits, reference)


@pytest.fixture(scope="module")
def shipped_scores(tmp_path_factory: pytest.TempPathFactory) -> dict[int | None, LanguageScores]:
    from wdmoe.eval.evaluate import heldout_documents

    hf = load_hf_model(shipped.SHIPPED_DIR)
    root = tmp_path_factory.mktemp("shipped")
    scores: dict[int | None, LanguageScores] = {}
    documents: list[list[int]] = []
    for bits in (None, 8, 4):
        split_model(hf, root / f"b{bits}", 8, source_dir=shipped.SHIPPED_DIR, bits=bits)
        model = DistributedMoE.from_pretrained(root / f"b{bits}")
        documents = documents or heldout_documents(model, shipped.HELDOUT_TEXT, 1000)
        scores[bits] = language_scores(model, documents, block_size=128)
        model.close()
    return scores


@pytest.mark.parametrize(("bits", "bound"), [(8, INT8_PPL_BOUND), (4, INT4_PPL_BOUND)])
def test_quantized_shipped_model_stays_within_the_stated_loss(shipped_scores: dict, bits: int, bound: float) -> None:
    base, quantized = shipped_scores[None], shipped_scores[bits]
    assert base.tokens >= 900
    assert quantized.perplexity <= base.perplexity * (1 + bound)
    assert quantized.next_token_accuracy >= base.next_token_accuracy - ACCURACY_DROP_BOUND


def test_split_cli_bits_options(tmp_path: Path, tiny_models: dict) -> None:
    from typer.testing import CliRunner

    from wdmoe.cli.main import app

    tiny_models["mixtral"].save_pretrained(tmp_path / "hf")
    (tmp_path / "bits.toml").write_text('[experts]\n"1:3" = 4\n')
    runner = CliRunner()
    result = runner.invoke(app, ["split", str(tmp_path / "hf"), "-n", "2", "--bits", "8", "-o", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert set(Manifest.read(tmp_path / "a").quantization.bits.values()) == {8}  # type: ignore[union-attr]
    args = ["split", str(tmp_path / "hf"), "-n", "2", "--bits-file", str(tmp_path / "bits.toml")]
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert Manifest.read(tmp_path / "b").quantization.bits == {(1, 3): 4}  # type: ignore[union-attr]
    result = runner.invoke(app, [*args, "--bits", "4", "-o", str(tmp_path / "c")])
    assert result.exit_code != 0 and "not both" in result.output
    shutil.rmtree(tmp_path / "hf")
