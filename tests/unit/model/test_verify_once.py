"""Loading hashes a split's files once: unchanged files (size, mtime, inode) are not re-hashed, a changed one is,
and a corrupt one is still refused. Hashes are counted by wrapping the real `sha256_file`, never by timing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from wdmoe import DistributedMoE
from wdmoe.errors import ShardError
from wdmoe.model import shards
from wdmoe.model.shards import VERIFIED, Manifest
from wdmoe.model.stream_split import split_checkpoint


@pytest.fixture
def hash_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = shards.sha256_file

    def counting(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(shards, "sha256_file", counting)
    return calls


def verify_all(root: Path) -> None:
    manifest = Manifest.read(root)
    for relative in manifest.files:
        manifest.verified_path(root, relative)


def test_a_fresh_split_needs_no_hash_and_a_second_load_no_rehash(mixtral_split: Path, tmp_path: Path,
                                                                  hash_calls: list[Path]) -> None:
    root = tmp_path / "split"
    shutil.copytree(mixtral_split, root)  # new inodes and mtimes: the record does not vouch for a copy
    verify_all(root)
    assert len(hash_calls) == len(Manifest.read(root).files)
    hash_calls.clear()
    verify_all(root)
    model = DistributedMoE.from_pretrained(root)
    model.close()
    assert hash_calls == []


def test_the_split_records_the_hashes_it_computed_while_writing(tiny_models, tmp_path: Path,
                                                                 hash_calls: list[Path]) -> None:
    tiny_models["mixtral"].save_pretrained(tmp_path / "hf")
    split_checkpoint(tmp_path / "hf", tmp_path / "split", 2)
    shard_hashes = [p for p in hash_calls if p.suffix == ".safetensors"]
    assert shard_hashes == []  # streamed files are hashed as they are written, not read back
    hash_calls.clear()
    verify_all(tmp_path / "split")
    assert hash_calls == []


def test_a_changed_byte_with_a_new_mtime_is_rehashed_and_refused(mixtral_split: Path, tmp_path: Path,
                                                                 hash_calls: list[Path]) -> None:
    root = tmp_path / "split"
    shutil.copytree(mixtral_split, root)
    verify_all(root)
    shard = root / "devices" / "device-1.safetensors"
    stat = shard.stat()
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    with shard.open("r+b") as f:  # in place: same inode, same size
        f.write(data)
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    hash_calls.clear()
    with pytest.raises(ShardError, match=r"checksum mismatch for devices/device-1\.safetensors"):
        Manifest.read(root).device_shard(root, 1)
    assert hash_calls == [shard]
    with pytest.raises(ShardError, match="checksum mismatch"):  # refused again: a mismatch is never recorded
        Manifest.read(root).device_shard(root, 1)


def test_a_broken_record_only_costs_a_rehash(mixtral_split: Path, tmp_path: Path, hash_calls: list[Path]) -> None:
    root = tmp_path / "split"
    shutil.copytree(mixtral_split, root)
    (root / VERIFIED).write_text("{not json")
    verify_all(root)
    assert len(hash_calls) == len(Manifest.read(root).files)
