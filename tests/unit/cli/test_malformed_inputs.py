"""The malformed-input corpus (issue 20, items 4 and 6): each bad file goes through the real `wdmoe` command, which
must exit with status 2, print no traceback, and name the file and the field (or what is wrong with the file).

Cases are built from a tiny Mixtral, its split over 4 devices, a synthetic trace and a plan made by `wdmoe plan`,
once per module; each case copies what it corrupts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from wdmoe.cli.main import app
from wdmoe.model.shards import Manifest

runner = CliRunner()


@dataclass(frozen=True)
class Base:
    root: Path
    hf: Path
    split: Path
    trace: Path
    plan: Path

    def copy_split(self, name: str) -> Path:
        out = self.root / name
        shutil.copytree(self.split, out)
        return out

    def copy_hf(self, name: str) -> Path:
        out = self.root / name
        shutil.copytree(self.hf, out)
        return out


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    root = tmp_path_factory.mktemp("corpus")
    hf, split, trace, plan = root / "hf", root / "split", root / "trace.npz", root / "plan.toml"
    cluster = root / "cluster.toml"
    cluster.write_text('[[devices]]\nname = "d"\npreset = "jetson-agx-orin"\nfree_memory_bytes = 50_000_000\n'
                       "link_rate_bps = 1e8\ncount = 4\n")
    for args in (
        ["make-tiny", "--out", str(hf), "--hidden", "32"],
        ["split", str(hf), "-n", "4", "--out", str(split)],
        ["trace", "synthesize", "--out", str(trace), "--devices", "4", "--layers", "2", "--requests", "2",
         "--new-tokens", "4"],
        ["plan", "--cluster", str(cluster), "--model", str(hf), "--out", str(plan), "--calibration-tokens", "0"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    return Base(root, hf, split, trace, plan)


def rehash(split: Path) -> None:
    """Make the manifest's sha256 sums agree with whatever the files now hold (a hand-'fixed' split)."""
    manifest = json.loads((split / "manifest.json").read_text())
    for name in manifest["files"]:
        manifest["files"][name] = hashlib.sha256((split / name).read_bytes()).hexdigest()
    (split / "manifest.json").write_text(json.dumps(manifest))


def edit_manifest(split: Path, change: Callable[[dict[str, Any]], object]) -> Path:
    manifest = json.loads((split / "manifest.json").read_text())
    change(manifest)
    (split / "manifest.json").write_text(json.dumps(manifest))
    return split


def run_args(model: Path, *extra: str) -> list[str]:
    return ["run", "--model", str(model), "--prompt-ids", "1,2,3", "--max-new-tokens", "1", *extra]


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


BINARY = os.urandom(64) + b"\xff\xfe\x00"
Case = tuple[list[str], Path, list[str]]  # CLI arguments, the bad file, what the message must hold besides its name
Build = Callable[[Base], Case]


# --- builders: each returns (CLI arguments, strings the message must hold); {file} stands for the bad file ---


def corrupt_shard(b: Base) -> Case:
    split = b.copy_split("corrupt")
    shard = split / "devices" / "device-0.safetensors"
    data = bytearray(shard.read_bytes())
    data[8:40] = b"x" * 32  # inside the safetensors header
    shard.write_bytes(bytes(data))
    rehash(split)
    return run_args(split), shard, ["not a readable safetensors file"]


def truncated_shard(b: Base) -> Case:
    split = b.copy_split("truncated")
    shard = split / "devices" / "device-1.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    rehash(split)
    return run_args(split), shard, ["not a readable safetensors file"]


def swap_shards(split: Path) -> None:
    zero, one = split / "devices" / "device-0.safetensors", split / "devices" / "device-1.safetensors"
    zero.rename(split / "swap")
    one.rename(zero)
    (split / "swap").rename(one)


def swapped_shards_rehashed(b: Base) -> Case:
    split = b.copy_split("swapped-rehashed")
    swap_shards(split)
    rehash(split)
    return run_args(split), split / "devices" / "device-0.safetensors", ["manifest.json", "placement.layers",
                                                                         "swapped shards"]


def swapped_shards(b: Base) -> Case:
    split = b.copy_split("swapped")
    swap_shards(split)
    return run_args(split), Path("devices/device-0.safetensors"), ["checksum mismatch"]


def placement_layer(layer: str) -> Build:
    def build(b: Base) -> Case:
        split = b.copy_split(f"layer{layer}")

        def move_layer(m: dict[str, Any]) -> None:
            layers = m["placement"]["layers"]
            layers[layer] = layers.pop("1")

        edit_manifest(split, move_layer)
        return run_args(split), split / "manifest.json", ["placement.layers", layer]

    return build


def placement_device(b: Base) -> Case:
    split = edit_manifest(b.copy_split("device99"), lambda m: m["placement"]["layers"]["0"][0].__setitem__(0, 99))
    return run_args(split), split / "manifest.json", ["placement", "device 99"]


def manifest_hidden_act(b: Base) -> Case:
    split = edit_manifest(b.copy_split("act"), lambda m: m.__setitem__("hidden_act", "bogus"))
    return run_args(split), split / "manifest.json", ["hidden_act", "'bogus'"]


def manifest_text(name: str, content: str | bytes, *expected: str) -> Build:
    def build(b: Base) -> Case:
        split = b.copy_split(name)
        write(split / "manifest.json", content)
        return run_args(split), split / "manifest.json", list(expected)

    return build


def manifest_field(name: str, field: str, value: Any, *expected: str) -> Build:
    def build(b: Base) -> Case:
        split = edit_manifest(b.copy_split(name), lambda m: m.__setitem__(field, value))
        return run_args(split), split / "manifest.json", [field, *expected]

    return build


def manifest_directory(b: Base) -> Case:
    split = b.copy_split("manifest-dir")
    (split / "manifest.json").unlink()
    (split / "manifest.json").mkdir()
    return run_args(split), split / "manifest.json", ["is a directory"]


def hf_hidden_act(b: Base) -> Case:
    hf = b.copy_hf("hf-act")
    config = json.loads((hf / "config.json").read_text())
    config["hidden_act"] = "bogus"
    (hf / "config.json").write_text(json.dumps(config))
    return ["split", str(hf), "--out", str(b.root / "out-act")], hf / "config.json", ["hidden_act", "'bogus'"]


def hf_without_weights(b: Base) -> Case:
    hf = b.root / "hf-empty"
    hf.mkdir()
    shutil.copy(b.hf / "config.json", hf)
    return ["split", str(hf), "--out", str(b.root / "out-empty")], hf, ["no weights", "model.safetensors"]


def hf_config_not_json(b: Base) -> Case:
    hf = b.copy_hf("hf-bad-config")
    (hf / "config.json").write_text("{not json")
    return ["split", str(hf), "--out", str(b.root / "out-bad-config")], hf / "config.json", ["not a readable"]


def simulate_scenario(name: str, content: str | bytes, *expected: str) -> Build:
    def build(b: Base) -> Case:
        scenario = write(b.root / name, content)
        return ["simulate", "--trace", str(b.trace), "--scenario", str(scenario)], scenario, list(expected)

    return build


def scenario_directory(b: Base) -> Case:
    folder = b.root / "scenario-dir.toml"
    folder.mkdir()
    return ["simulate", "--trace", str(b.trace), "--scenario", str(folder)], folder, ["is a directory"]


def run_scenario_inf(b: Base) -> Case:
    scenario = write(b.root / "run-inf.toml", "num_devices = 4\ndistance_max_m = inf\n")
    return run_args(b.split, "--scenario", str(scenario)), scenario, ["distance_max_m", "inf m", "finite"]


DEVICE = '[[devices]]\nname = "d"\npreset = "jetson-agx-orin"\nfree_memory_bytes = 50_000_000\nlink_rate_bps = 1e8\n'


def cluster(name: str, content: str | bytes, *expected: str) -> Build:
    def build(b: Base) -> Case:
        path = write(b.root / name, content)
        return (["plan", "--cluster", str(path), "--model", str(b.hf), "--out", str(b.root / "unused.toml"),
                 "--calibration-tokens", "0"], path, list(expected))

    return build


def plan_edit(name: str, change: Callable[[str], str | bytes], *expected: str) -> Build:
    def build(b: Base) -> Case:
        path = write(b.root / name, change(b.plan.read_text()))
        return ["split", str(b.hf), "--plan", str(path), "--out", str(b.root / f"out-{name}")], path, list(expected)

    return build


def bits_file(name: str, content: str | bytes, *expected: str) -> Build:
    def build(b: Base) -> Case:
        path = write(b.root / name, content)
        return (["split", str(b.hf), "--bits-file", str(path), "--out", str(b.root / f"out-{name}")], path,
                list(expected))

    return build


def trace_file(name: str, content: bytes, *expected: str) -> Build:
    def build(b: Base) -> Case:
        path = write(b.root / name, content)
        return ["simulate", "--trace", str(path)], path, list(expected)

    return build


CASES: dict[str, Build] = {
    "manifest re-hashed to a corrupt shard": corrupt_shard,
    "manifest re-hashed to a truncated shard": truncated_shard,
    "swapped shards, manifest re-hashed": swapped_shards_rehashed,
    "swapped shards": swapped_shards,
    "placement layer out of range": placement_layer("99"),
    "placement layer negative": placement_layer("-1"),
    "placement device out of range": placement_device,
    "manifest hidden_act bogus": manifest_hidden_act,
    "manifest is a list": manifest_text("manifest-list", "[]", "is a list"),
    "manifest truncated": manifest_text("manifest-cut", '{"format": "wdmoe-split/1", "fam', "not valid JSON"),
    "manifest binary": manifest_text("manifest-bin", BINARY, "not UTF-8 text"),
    "manifest is a directory": manifest_directory,
    "manifest placement is a list": manifest_field("placement-list", "placement", [], "= []"),
    "manifest files outside the split": manifest_field("files-out", "files", {"../../etc/passwd": "0" * 64},
                                                       "must match"),
    "manifest quantization key": manifest_field(
        "quant-key", "quantization", {"bits": {"x": 4}, "group_size": 32, "dtype": "float32"}, "'x'"),
    "HF config hidden_act bogus": hf_hidden_act,
    "HF directory without weights": hf_without_weights,
    "HF config.json not JSON": hf_config_not_json,
    "scenario binary": simulate_scenario("scenario-bin.toml", BINARY, "not UTF-8 text"),
    "scenario inf": simulate_scenario("scenario-inf.toml", "bandwidth_hz = inf\n", "bandwidth_hz", "inf Hz", "finite"),
    "scenario nan": simulate_scenario("scenario-nan.toml", "[channel]\npl0_db = nan\n", "channel.pl0_db", "nan dB"),
    "scenario a million devices": simulate_scenario("scenario-big.toml", "num_devices = 1000000\n", "num_devices",
                                                    "1000000", "<= 4096"),
    "scenario a directory": scenario_directory,
    "scenario table as a list": simulate_scenario("scenario-list.toml", "channel = [1, 2]\n", "'channel'", "[1, 2]"),
    "scenario inf (run)": run_scenario_inf,
    "cluster a million devices": cluster("cluster-big.toml", DEVICE + "count = 1000000\n", "devices[0].count",
                                         "1000000", "<= 4096"),
    "cluster many device tables": cluster("cluster-many.toml", "".join(
        DEVICE.replace('"d"', f'"d{i}"') + "count = 4000\n" for i in range(2)), "8000 devices", "4096"),
    "cluster nan and inf": cluster("cluster-nan.toml", "bandwidth_hz = nan\n" + DEVICE.replace("1e8", "inf"),
                                   "'bandwidth_hz' = nan Hz", "'devices[0].link_rate_bps' = inf bit/s"),
    "cluster binary": cluster("cluster-bin.toml", BINARY, "not UTF-8 text"),
    "cluster [scenario] bad key (Rich markup)": cluster(
        "cluster-scenario.toml", "[scenario]\nbogus = 1\n" + DEVICE, "[scenario]", "'bogus'"),
    "plan device out of range": plan_edit("plan-device.toml", lambda t: t.replace("copies = [[", "copies = [[77, ", 1),
                                          "layers[0].copies", "77"),
    "plan devices not tables": plan_edit(
        "plan-devices.toml",
        lambda t: t.replace("[[devices]]", "[[devices_]]").replace("format =", "devices = 3\nformat ="),
        "'devices' = 3"),
    "plan nan latency": plan_edit(
        "plan-nan.toml", lambda t: re.sub(r"expected_latency_s = .*", "expected_latency_s = nan", t),
        "expected_latency_s", "nan s", "finite"),
    "plan bits 3": plan_edit("plan-bits.toml", lambda t: re.sub(r"bits = \[\d+", "bits = [3", t, count=1),
                             "layers[0].bits[0]", "= 3 bits"),
    "plan binary": plan_edit("plan-bin.toml", lambda t: BINARY, "not UTF-8 text"),
    "bits file unknown key": bits_file("bits-typo.toml", "defualt = 8\n", "'defualt'", "allowed keys here: default"),
    "bits file expert outside a table": bits_file("bits-top.toml", '"0:3" = 4\n', "unknown key '0:3'"),
    "bits file width 3": bits_file("bits-3.toml", "default = 3\n", "'default' = 3", "4, 8, 16 or 32"),
    "bits file layer not in the model": bits_file("bits-layer.toml", '[experts]\n"9:3" = 4\n', '"9:3"', "[0, 1]"),
    "bits file experts as a list": bits_file("bits-list.toml", "experts = [1, 2]\n", "'experts' = [1, 2]"),
    "bits file bad key": bits_file("bits-key.json", '{"experts": {"layer0": 4}}', "'layer0'"),
    "bits file binary": bits_file("bits-bin.toml", BINARY, "not UTF-8 text"),
    "trace binary": trace_file("trace-bin.npz", BINARY, "not a wdmoe trace file", "not an .npz archive"),
    "trace truncated": trace_file("trace-cut.npz", b"PK\x03\x04" + BINARY, "not a wdmoe trace file"),
}


def flat(text: str) -> str:
    """The output with Rich's line wrapping undone (a message may be wider than the console)."""
    return re.sub(r"\s*\n\s*", " ", text)


@pytest.mark.parametrize("case", list(CASES))
def test_a_malformed_input_exits_2_with_one_message_naming_the_file_and_field(base: Base, case: str) -> None:
    args, bad_file, expected = CASES[case](base)

    result = runner.invoke(app, args)

    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    output = flat(result.output)
    # one message (transformers' "Loading weights" bar may precede it when another test imported transformers first)
    assert "Traceback" not in output and output.count("error: ") == 1, result.output
    for needle in (str(bad_file), *expected):
        assert needle in output or needle in result.output.replace("\n", ""), (needle, result.output)


def test_the_bits_file_format_split_help_documents_is_applied(base: Base) -> None:
    path = write(base.root / "bits-doc.toml", 'default = 8\n[experts]\n"0:3" = 4\n')
    out = base.root / "out-bits-doc"

    result = runner.invoke(app, ["split", str(base.hf), "--bits-file", str(path), "--out", str(out)])

    assert result.exit_code == 0, result.output
    quantization = Manifest.read(out).quantization
    assert quantization is not None
    assert quantization.bits[(0, 3)] == 4
    assert {b for pair, b in quantization.bits.items() if pair != (0, 3)} == {8}
    assert len(quantization.bits) == 2 * 8  # every expert of the 2 MoE layers: 8 by default, one at 4
