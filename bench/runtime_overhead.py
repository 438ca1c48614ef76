"""Split runtime (in-process devices, TopK) against the unsplit Hugging Face model, side by side in one run.

Decode: greedy generation of --new-tokens tokens (tokens/s). Prefill: one forward over a --prompt-len prompt
(tokens/s). Both models run alternately, --repeats times each, on the same CPU threads; the ratios are of the
medians (split / unsplit), so a ratio of 1.0 means no overhead.

    python bench/runtime_overhead.py [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from wdmoe import DistributedMoE
from wdmoe.model.split import split_model
from wdmoe.model.tiny import tiny_model


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    reference = tiny_model(
        "mixtral", seed=0, hidden_size=args.hidden, num_hidden_layers=args.layers,
        intermediate_size=args.hidden * 2, num_attention_heads=8, num_key_value_heads=4, vocab_size=1024,
        max_position_embeddings=1024,
    )
    tmp = tempfile.TemporaryDirectory()
    split_model(reference, Path(tmp.name) / "split", args.devices)
    ours = DistributedMoE.from_pretrained(Path(tmp.name) / "split")
    prompt = torch.randint(0, 1024, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    short = prompt[:, :8]
    mask = torch.ones_like(short)
    gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)

    def decode_ref() -> object:
        with torch.inference_mode():
            return reference.generate(short, attention_mask=mask, **gen)

    def decode_ours() -> object:
        ours.telemetry.clear()
        return ours.generate(short, **gen)

    def prefill_ref() -> object:
        with torch.inference_mode():
            return reference(prompt)

    def prefill_ours() -> object:
        ours.telemetry.clear()
        return ours(prompt)

    assert torch.equal(decode_ref(), decode_ours()), "split runtime diverged from the unsplit model"
    times: dict[str, list[float]] = {"decode_ref": [], "decode_ours": [], "prefill_ref": [], "prefill_ours": []}
    for _ in range(args.repeats):
        times["decode_ref"].append(timed(decode_ref))
        times["decode_ours"].append(timed(decode_ours))
        times["prefill_ref"].append(timed(prefill_ref))
        times["prefill_ours"].append(timed(prefill_ours))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "model": f"mixtral hidden {args.hidden}, {args.layers} layers, 8 experts, top-2, fp32",
        "devices": args.devices,
        "threads": torch.get_num_threads(),
        "decode_tokens_per_s": {"split": args.new_tokens / med["decode_ours"],
                                "unsplit": args.new_tokens / med["decode_ref"]},
        "prefill_tokens_per_s": {"split": args.prompt_len / med["prefill_ours"],
                                 "unsplit": args.prompt_len / med["prefill_ref"]},
        "decode_ratio": med["decode_ref"] / med["decode_ours"],
        "prefill_ratio": med["prefill_ref"] / med["prefill_ours"],
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"{result['model']}, {args.devices} in-process devices, {result['threads']} threads")
    for phase in ("decode", "prefill"):
        tps = result[f"{phase}_tokens_per_s"]
        print(f"{phase:8s} split {tps['split']:9.1f} tok/s   unsplit {tps['unsplit']:9.1f} tok/s   "
              f"ratio {result[f'{phase}_ratio']:.3f}")


if __name__ == "__main__":
    main()
