"""Peak memory of `wdmoe split`: the streaming split side by side with the former in-memory split (issue 16 item 4).

Builds a random Mixtral-family checkpoint from a config (`save_pretrained`, safetensors) in a scratch directory,
then runs each step in its own process under GNU time (`/usr/bin/time -v`: maximum resident set size, wall time):

    stream   `wdmoe split MODEL --out S -n 8`                     (reads and writes one tensor at a time)
    memory   `split_model(load_hf_model(MODEL), ...)`              (loads the whole model first; --no-reference: skip)
    run      `wdmoe run --model S --prompt-ids 1,2,3 --max-new-tokens N --dtype auto`, twice: the first load trusts
             the hashes the split recorded, the second too; with the record removed, the first re-hashes every file

and prints peak RSS (GiB) and wall seconds of each, and stream/memory ratios. Everything it wrote is deleted.

    python bench/split_memory.py --preset mixtral-3gb [--scratch /tmp/wdmoe-bench]
    python bench/split_memory.py --preset mixtral-8x7b-2layers --no-reference
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GNU_TIME = "/usr/bin/time"
PRESETS = {
    # a few MB: checks the script itself
    "mixtral-tiny": dict(dtype="float32", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_local_experts=8, vocab_size=256),
    # ~3.2 GB in fp32: 8 layers of 8 experts (1024 -> 3584), vocab 32000
    "mixtral-3gb": dict(dtype="float32", hidden_size=1024, intermediate_size=3584, num_hidden_layers=8,
                        num_attention_heads=16, num_key_value_heads=4, num_local_experts=8, vocab_size=32000),
    # Mixtral-8x7B's shapes with 2 of its 32 layers, bf16 (~6.3 GB)
    "mixtral-8x7b-2layers": dict(dtype="bfloat16", hidden_size=4096, intermediate_size=14336, num_hidden_layers=2,
                                 num_attention_heads=32, num_key_value_heads=8, num_local_experts=8, vocab_size=32000),
}


def build(preset: str, out: Path) -> float:
    """Save a random model of `preset` to `out`; returns the checkpoint's size in GB."""
    import torch
    from transformers import AutoModelForCausalLM, MixtralConfig

    fields = dict(PRESETS[preset])
    dtype = getattr(torch, str(fields.pop("dtype")))
    config = MixtralConfig(num_experts_per_tok=2, max_position_embeddings=4096, tie_word_embeddings=False, **fields)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(out)
    del model
    return sum(p.stat().st_size for p in out.glob("*.safetensors")) / 1e9


def timed(argv: list[str]) -> dict[str, float]:
    """Run `argv` under GNU time; its peak RSS (GiB) and wall seconds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run([GNU_TIME, "-v", *argv], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", done.stderr)
    if rss is None or wall is None:
        raise RuntimeError(f"no GNU time report in:\n{done.stderr[-2000:]}")
    rss_kb, clock = int(rss.group(1)), wall.group(1)
    seconds = 0.0
    for part in clock.split(":"):
        seconds = seconds * 60 + float(part)
    return {"peak_rss_gib": rss_kb / 2**20, "wall_s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="mixtral-3gb")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/wdmoe-bench"))
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=4)
    parser.add_argument("--no-reference", action="store_true", help="skip the in-memory split (it needs ~2.3x RAM)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not Path(GNU_TIME).is_file():
        sys.exit(f"{GNU_TIME} (GNU time) is missing: apt-get install time")
    scratch = args.scratch / args.preset
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    model, split = scratch / "hf", scratch / "split"
    py, wdmoe = sys.executable, [sys.executable, "-c", "from wdmoe.cli.main import app; app()"]
    results: dict[str, object] = {"preset": args.preset, "config": PRESETS[args.preset]}
    try:
        start = time.perf_counter()
        results["checkpoint_gb"] = round(build(args.preset, model), 3)
        results["build_s"] = round(time.perf_counter() - start, 1)
        results["stream"] = timed([*wdmoe, "split", str(model), "--out", str(split), "-n", str(args.devices)])
        if not args.no_reference:
            reference = ("import sys; from pathlib import Path; from wdmoe.model.split import load_hf_model, "
                         "split_model; split_model(load_hf_model(Path(sys.argv[1])), Path(sys.argv[2]), "
                         "int(sys.argv[3]))")
            results["memory"] = timed([py, "-c", reference, str(model), str(scratch / "old"), str(args.devices)])
            shutil.rmtree(scratch / "old")
        shutil.rmtree(model)  # the run below reads the split only
        run = [*wdmoe, "run", "--model", str(split), "--prompt-ids", "1,2,3", "--max-new-tokens",
               str(args.tokens), "--dtype", "auto", "--json"]
        results["run_first"] = timed(run)
        results["run_again"] = timed(run)
        (split / ".verified.json").unlink()
        results["run_rehash"] = timed(run)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print(f"{args.preset}: checkpoint {results['checkpoint_gb']} GB (built in {results['build_s']} s)")
    for step in ("stream", "memory", "run_first", "run_again", "run_rehash"):
        if step in results:
            r = results[step]
            assert isinstance(r, dict)
            print(f"  {step:10s} peak RSS {r['peak_rss_gib']:6.2f} GiB   wall {r['wall_s']:7.1f} s")
    if "memory" in results:
        s, m = results["stream"], results["memory"]
        assert isinstance(s, dict) and isinstance(m, dict)
        print(f"  stream/memory: peak RSS x{s['peak_rss_gib'] / m['peak_rss_gib']:.2f}, "
              f"wall x{s['wall_s'] / m['wall_s']:.2f}")


if __name__ == "__main__":
    main()
