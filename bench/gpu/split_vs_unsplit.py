"""Bench (c): the split runtime against the unsplit Hugging Face model, side by side on one GPU.

A Mixtral config with Mixtral's layer sizes (hidden 4096, intermediate 14336, 8 experts, top-2, 32 heads, 8 KV
heads, vocab 32000) and 4 layers, random weights in bf16, is built directly on the GPU. It is split over 8
in-process devices that all compute on the same GPU (TopK, the model's own routing), and both models run:

    decode   greedy `generate` of 64 new tokens after an 8-token prompt: new tokens / wall seconds
    prefill  one forward over a 512-token prompt: prompt tokens / wall seconds

alternately, --repeats times each; reported are the medians and the ratio split / unsplit (target: decode >= 1.2,
docs/gpu.md). On CUDA the split model decodes as replays of one CUDA graph per step (wdmoe.runtime.graphed_decode);
in the same interleaved repeats it is also timed on the runtime's host path with the devices' one-row FFN graphs
(`decode_ratio_host_path`), with no graph at all (`decode_ratio_no_graphs`), and with the graphed step through
torch.compile (`decode_ratio_compiled`, `DistributedMoE.compile_decode`), and every captured one-row graph's
output is compared bit for bit with the eager FFN on a random row (`cuda_graphs_bit_identical`). --no-cuda-graphs
turns graphs off for the whole run. `decode_hbm_roofline_fraction`: the bytes a decode token must read
(`decode_bytes_per_token`: every weight but the routed experts', top-k experts per layer, the KV cache) at the
copy bandwidth measured in the run, over the measured time per new token (prefill of the short prompt included).
Tokens are checked for identity (bf16 kernels of different batch shapes may round differently, so a late
divergence is reported, not hidden), and on CUDA the host synchronizations per decode step of each model are
counted with torch.cuda.set_sync_debug_mode.

    python bench/gpu/split_vs_unsplit.py [--json] [--small] [--layers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from ceilings import copy_bandwidth_bytes_per_s, device_name, parse_dtype, pick_device, wall_s

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from transformers import AutoModelForCausalLM, MixtralConfig

from wdmoe.backends.base import DeviceBatch
from wdmoe.model.split import split_model
from wdmoe.runtime.model import DistributedMoE


def build_reference(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> Any:
    """The unsplit random Mixtral, allocated and initialized on `device` (no host copy of its weights)."""
    config = MixtralConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        num_local_experts=args.experts, num_experts_per_tok=args.top_k, max_position_embeddings=4096,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=None, pad_token_id=0,
    )
    torch.manual_seed(args.seed)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def decode_bytes_per_token(model: Any, top_k: int, context: int) -> int:
    """Bytes one decode token must read from memory at least: every weight but the routed experts' and the
    embedding table's, top_k experts per MoE layer, one embedding row, and the KV cache of `context` tokens."""
    config = model.config
    expert_params = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name)
    embed = model.get_input_embeddings().weight
    params = sum(p.numel() for p in model.parameters()) - expert_params - embed.numel() + embed.shape[1]
    params += expert_params * top_k // config.num_local_experts
    head_dim = config.hidden_size // config.num_attention_heads
    kv = 2 * config.num_hidden_layers * context * config.num_key_value_heads * head_dim
    return (params + kv) * embed.element_size()


def syncs_per_step(generate: Callable[[int], object], steps: int) -> float:
    """Synchronizing CUDA calls per decode step: those of a `steps`-token generate minus a 1-token one, / steps-1."""
    counts = []
    for n in (1, steps):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                generate(n)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    return (counts[1] - counts[0]) / (steps - 1)


def graphs_bit_identical(workers: list[Any], device: torch.device, seed: int) -> dict[str, int]:
    """Each captured (layer, expert) graph of each worker against the worker's eager path on one random row."""
    gen = torch.Generator(device=device).manual_seed(seed)
    checked = identical = 0
    with torch.inference_mode():
        for worker in workers:
            for layer, expert in worker.graphed:
                gate_up = worker.weights[(layer, expert)][0]
                x = torch.randn(1, gate_up.shape[1], device=device, generator=gen).to(gate_up.dtype)
                batch = DeviceBatch(worker.device, layer, x, torch.zeros(1, dtype=torch.long), torch.tensor([expert]))
                replayed = worker.run(batch).output.clone()
                worker.cuda_graphs = False
                eager = worker.run(batch).output
                worker.cuda_graphs = True
                checked, identical = checked + 1, identical + int(torch.equal(replayed, eager))
    return {"checked": checked, "identical": identical}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    device, dtype = pick_device(args.device, args.small), parse_dtype(args.dtype)
    reference = build_reference(args, device, dtype)
    tmp = tempfile.TemporaryDirectory(prefix="wdmoe-gpu-bench-", dir=args.tmp)
    split_model(reference, Path(tmp.name) / "split", args.devices)
    ours = DistributedMoE.from_pretrained(Path(tmp.name) / "split", torch_device=str(device))
    workers = list(getattr(ours.pool, "workers", []))
    if args.no_cuda_graphs:
        for worker in workers:
            worker.cuda_graphs = False
    graphs = any(getattr(w, "cuda_graphs", False) for w in workers)
    ours.graphed_decode = graphs  # the whole decode step as one CUDA graph (wdmoe.runtime.graphed_decode)

    def set_graphs(on: bool, whole_step: bool | None = None) -> None:
        """Devices' one-row graphs `on`; the whole-step graph `whole_step` (default: as `on`)."""
        for worker in workers:
            worker.cuda_graphs = on
        ours.graphed_decode = on if whole_step is None else whole_step
    gen = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(2, args.vocab, (1, args.prompt_len), generator=gen).to(device)
    short = prompt[:, : args.decode_prompt_len]

    def generate(model: Any, new_tokens: int) -> torch.Tensor:
        if model is ours:
            ours.telemetry.clear()
            return ours.generate(short, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        with torch.inference_mode():
            return reference.generate(short, attention_mask=torch.ones_like(short), max_new_tokens=new_tokens,
                                      min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)

    def prefill(model: Any) -> torch.Tensor:
        if model is ours:
            ours.telemetry.clear()
            return ours(prompt).logits
        with torch.inference_mode():
            return reference(prompt).logits

    expected, actual = generate(reference, args.new_tokens), generate(ours, args.new_tokens)
    new_ref, new_ours = expected[0, short.shape[1]:].tolist(), actual[0, short.shape[1]:].tolist()
    same = [a == b for a, b in zip(new_ref, new_ours, strict=True)]
    ref_logits, our_logits = prefill(reference).float(), prefill(ours).float()
    graph_check, same_without_graphs, same_host_path, same_compiled = None, None, None, None
    if graphs:
        ours.compile_decode = True  # the graphed step through torch.compile (compiles here, once)
        same_compiled = bool(torch.equal(generate(ours, args.new_tokens), actual))
        ours.compile_decode = False
        set_graphs(True, whole_step=False)  # the host path captures the devices' one-row graphs
        same_host_path = bool(torch.equal(generate(ours, args.new_tokens), actual))
        set_graphs(False)
        same_without_graphs = bool(torch.equal(generate(ours, args.new_tokens), actual))
        set_graphs(True)
        graph_check = graphs_bit_identical(workers, device, args.seed)
    times: dict[str, list[float]] = {"decode_ref": [], "decode_ours": [], "prefill_ref": [], "prefill_ours": []}
    if graphs:
        times["decode_ours_no_graphs"], times["decode_ours_host"], times["decode_ours_compiled"] = [], [], []
    for _ in range(args.repeats):  # interleaved, so drifts in clocks or temperature hit both alike
        times["decode_ref"].append(wall_s(lambda: generate(reference, args.new_tokens), device))
        times["decode_ours"].append(wall_s(lambda: generate(ours, args.new_tokens), device))
        if graphs:
            ours.compile_decode = True
            times["decode_ours_compiled"].append(wall_s(lambda: generate(ours, args.new_tokens), device))
            ours.compile_decode = False
            set_graphs(True, whole_step=False)  # the host path: the runtime's layer step, devices' one-row graphs
            times["decode_ours_host"].append(wall_s(lambda: generate(ours, args.new_tokens), device))
            set_graphs(False)
            times["decode_ours_no_graphs"].append(wall_s(lambda: generate(ours, args.new_tokens), device))
            set_graphs(True)
        times["prefill_ref"].append(wall_s(lambda: prefill(reference), device))
        times["prefill_ours"].append(wall_s(lambda: prefill(ours), device))
    med = {k: statistics.median(v) for k, v in times.items()}
    token_bytes = decode_bytes_per_token(reference, args.top_k, args.decode_prompt_len + args.new_tokens // 2)
    copy_bw = copy_bandwidth_bytes_per_s(device, (1 << 31) if device.type == "cuda" else (1 << 24))
    roofline_s = token_bytes / copy_bw  # per token: its bytes at the measured copy bandwidth (read + write)
    result: dict[str, Any] = {
        "bench": "split_vs_unsplit",
        "device": device_name(device),
        "torch": torch.__version__,
        "model": f"mixtral hidden {args.hidden}, intermediate {args.intermediate}, {args.layers} layers, "
                 f"{args.experts} experts, top-{args.top_k}, {args.heads}/{args.kv_heads} heads, vocab {args.vocab}",
        "dtype": args.dtype,
        "devices": args.devices,
        "hf_experts_implementation": reference.config._experts_implementation,
        "hf_attention_implementation": reference.config._attn_implementation,
        "new_tokens": args.new_tokens,
        "prompt_len": args.prompt_len,
        "repeats": args.repeats,
        "decode_tokens_per_s": {"split": args.new_tokens / med["decode_ours"],
                                "unsplit": args.new_tokens / med["decode_ref"]},
        "prefill_tokens_per_s": {"split": args.prompt_len / med["prefill_ours"],
                                 "unsplit": args.prompt_len / med["prefill_ref"]},
        "decode_ratio": med["decode_ref"] / med["decode_ours"],
        "decode_ratio_fastest": min(times["decode_ref"]) / min(times["decode_ours"]),
        "cuda_graphs": graphs,
        "decode_ratio_no_graphs": med["decode_ref"] / med["decode_ours_no_graphs"] if graphs else None,
        "decode_ratio_no_graphs_fastest": (min(times["decode_ref"]) / min(times["decode_ours_no_graphs"])
                                           if graphs else None),
        "decode_ratio_host_path": med["decode_ref"] / med["decode_ours_host"] if graphs else None,
        "tokens_identical_host_path": same_host_path,
        "decode_bytes_per_token": token_bytes,
        "copy_bytes_per_s": copy_bw,
        "decode_roofline_s_per_token": roofline_s,
        "decode_hbm_roofline_fraction": {"split": roofline_s * args.new_tokens / med["decode_ours"],
                                         "unsplit": roofline_s * args.new_tokens / med["decode_ref"],
                                         "split_compiled": (roofline_s * args.new_tokens / med["decode_ours_compiled"]
                                                            if graphs else None)},
        "decode_ratio_compiled": med["decode_ref"] / med["decode_ours_compiled"] if graphs else None,
        "tokens_identical_compiled": same_compiled,
        "cuda_graphs_bit_identical": graph_check,
        "tokens_identical_without_graphs": same_without_graphs,
        "prefill_ratio": med["prefill_ref"] / med["prefill_ours"],
        "times_s": times,
        "tokens_identical": all(same),
        "token_agreement": sum(same) / len(same),
        "first_divergence": same.index(False) if not all(same) else None,
        "prefill_logits_rel_err": float((our_logits - ref_logits).norm() / ref_logits.norm()),
        "prefill_argmax_agreement": float((our_logits.argmax(-1) == ref_logits.argmax(-1)).float().mean()),
        "syncs_per_decode_step": None,
    }
    if device.type == "cuda":
        steps = min(args.new_tokens, 8)
        result["syncs_per_decode_step"] = {"split": syncs_per_step(lambda n: generate(ours, n), steps),
                                           "unsplit": syncs_per_step(lambda n: generate(reference, n), steps)}
    ours.close()
    tmp.cleanup()
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in (("layers", 4), ("hidden", 4096), ("intermediate", 14336), ("experts", 8), ("top-k", 2),
                          ("heads", 32), ("kv-heads", 8), ("vocab", 32000), ("devices", 8), ("new-tokens", 64),
                          ("prompt-len", 512), ("decode-prompt-len", 8), ("repeats", 21), ("seed", 0)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--dtype", default=None, help="fp32, bf16 (default) or fp16; fp32 with --small")
    parser.add_argument("--device", default=None, help="cuda (default) or cpu (default with --small)")
    parser.add_argument("--tmp", default=None, help="where the split is written (default: the system's temp dir)")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="devices run every call eagerly")
    parser.add_argument("--small", action="store_true", help="tiny sizes on the CPU: runs in seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.small:
        args.layers, args.hidden, args.intermediate, args.heads, args.kv_heads, args.vocab = 2, 64, 128, 4, 2, 256
        args.new_tokens, args.prompt_len, args.repeats, args.dtype = 8, 32, 1, args.dtype or "fp32"
    args.dtype = args.dtype or "bf16"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = measure(args)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"{result['model']}, {args.dtype}, on {result['device']}; split over {args.devices} in-process devices; "
          f"HF experts: {result['hf_experts_implementation']}")
    for phase in ("decode", "prefill"):
        tps = result[f"{phase}_tokens_per_s"]
        print(f"{phase:8s} split {tps['split']:9.1f} tok/s   unsplit {tps['unsplit']:9.1f} tok/s   "
              f"ratio {result[f'{phase}_ratio']:.3f}")
    print(f"tokens identical: {result['tokens_identical']} (agreement {result['token_agreement']:.0%}, first "
          f"divergence {result['first_divergence']}); prefill logits rel. error {result['prefill_logits_rel_err']:.2e}")
    print(f"decode ratio of the fastest repeats {result['decode_ratio_fastest']:.3f}")
    if result["cuda_graphs"]:
        g = result["cuda_graphs_bit_identical"]
        print(f"graphed step torch.compiled: decode ratio {result['decode_ratio_compiled']:.3f}, HBM roofline "
              f"fraction {result['decode_hbm_roofline_fraction']['split_compiled']:.3f}, tokens identical to the "
              f"uncompiled graph's: {result['tokens_identical_compiled']}")
        print(f"the runtime's host path (devices' one-row graphs): decode ratio "
              f"{result['decode_ratio_host_path']:.3f}, "
              f"tokens identical to the graphed decode's: {result['tokens_identical_host_path']}")
        print(f"without CUDA graphs: decode ratio {result['decode_ratio_no_graphs']:.3f} (fastest repeats "
              f"{result['decode_ratio_no_graphs_fastest']:.3f}); graphs bit-identical to eager: {g['identical']} of "
              f"{g['checked']}; tokens identical with graphs off: {result['tokens_identical_without_graphs']}")
    f = result["decode_hbm_roofline_fraction"]
    print(f"decode at {result['decode_bytes_per_token'] / 1e9:.3g} GB per token and "
          f"{result['copy_bytes_per_s'] / 1e9:.4g} GB/s copy: HBM roofline fraction split {f['split']:.3f}, "
          f"unsplit {f['unsplit']:.3f}")
    if result["syncs_per_decode_step"] is not None:
        s = result["syncs_per_decode_step"]
        print(f"host syncs per decode step: split {s['split']:.1f}, unsplit {s['unsplit']:.1f}")


if __name__ == "__main__":
    main()
