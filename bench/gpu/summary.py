"""The tables of docs/gpu.md, as Markdown, from the JSON files that bench/gpu/run_all.sh wrote into a directory.

    python bench/gpu/summary.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def expert_ffn(r: dict[str, Any]) -> list[str]:
    c, names = r["ceilings"], r["variants"]
    lines = [f"### (a) expert FFN: {r['device']}, {r['dtype']}, H {r['hidden']}, I {r['intermediate']}", "",
             f"Measured in the run: matmul peak {c['matmul_flops_per_s'] / 1e12:.4g} TFLOP/s ({c['matmul_n']}^3, "
             f"sustained after {c.get('settle_s', 0):g} s; {(c.get('matmul_flops_per_s_cold') or 0) / 1e12:.4g} "
             "TFLOP/s in the first burst), "
             f"copy bandwidth {c['copy_bytes_per_s'] / 1e9:.4g} GB/s (read + write); ridge at "
             f"{r['ridge_tokens']:.0f} tokens.", "",
             "| tokens | roofline us | " + " | ".join(f"{n} us | {n} / roofline" for n in names) + " |",
             "|---:|---:|" + "---:|---:|" * len(names)]
    for row in r["rows"]:
        cells = " | ".join(f"{row['time_s'][n] * 1e6:.1f} | {row['fraction'][n]:.2f}" for n in names)
        lines.append(f"| {row['tokens']} | {row['roofline_s'] * 1e6:.1f} | {cells} |")
    target = r["target"]
    marks = {None: "-", True: "met", False: "missed"}
    verdict = ", ".join(f"{n}: {marks[ok]}" for n, ok in r["meets_target"].items())
    lines += ["", f"Target >= {target['fraction']:.0%} of roofline from {target['from_tokens']} tokens: {verdict}."]
    judged = [row for row in r["rows"] if row["tokens"] >= target["from_tokens"] and "roofline_cold_s" in row]
    if judged and names:
        cold = ", ".join(f"{row['roofline_cold_s'] / row['time_s'][names[0]]:.2f} ({row['tokens']})" for row in judged)
        lines.append(f"{names[0]} / roofline against the first-burst peak instead: {cold}.")
    lines += [f"{n} did not run: {why}" for n, why in r["errors"].items()]
    return lines


def bs_step(r: dict[str, Any]) -> list[str]:
    lines = [f"### (b) BS step per layer: {r['device']}, {r['dtype']}, hidden {r['hidden']}, {r['heads']} heads, "
             f"{r['kv_heads']} KV heads, {r['attention']}", "",
             "| phase | tokens | context | time us | roofline us | roofline / time |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {x['phase']} | {x['tokens']} | {x['context']} | {x['time_s'] * 1e6:.1f} | "
              f"{x['roofline_s'] * 1e6:.1f} | {x['fraction']:.2f} |" for x in r["rows"]]
    return lines


def split_vs_unsplit(r: dict[str, Any]) -> list[str]:
    d, p = r["decode_tokens_per_s"], r["prefill_tokens_per_s"]
    lines = [f"### (c) split vs unsplit: {r['model']}, {r['dtype']}, {r['device']}, {r['devices']} in-process "
             f"devices; HF experts {r['hf_experts_implementation']}", "",
             "| phase | split tok/s | unsplit tok/s | split / unsplit |", "|---|---:|---:|---:|",
             f"| decode ({r['new_tokens']} new tokens) | {d['split']:.1f} | {d['unsplit']:.1f} | "
             f"{r['decode_ratio']:.3f} |",
             f"| prefill ({r['prompt_len']} tokens) | {p['split']:.1f} | {p['unsplit']:.1f} | "
             f"{r['prefill_ratio']:.3f} |",
             "", f"Medians of {r['repeats']} interleaved repeats. Tokens identical: {r['tokens_identical']} "
             f"(agreement {r['token_agreement']:.0%}, first divergence {r['first_divergence']}); prefill logits "
             f"relative error {r['prefill_logits_rel_err']:.2e}."]
    if "decode_ratio_fastest" in r:
        lines.append(f"Decode ratio of the fastest repeats: {r['decode_ratio_fastest']:.3f}.")
    if r.get("cuda_graphs"):
        g = r["cuda_graphs_bit_identical"]
        lines.append(f"Devices with CUDA graphs (one-row expert calls replayed); with graphs off in the same repeats: "
                     f"decode ratio {r['decode_ratio_no_graphs']:.3f} (fastest repeats "
                     f"{r['decode_ratio_no_graphs_fastest']:.3f}). Graph outputs bit-identical to the eager FFN: "
                     f"{g['identical']} of {g['checked']}; tokens identical with graphs off: "
                     f"{r['tokens_identical_without_graphs']}.")
    if r.get("decode_hbm_roofline_fraction"):
        f = r["decode_hbm_roofline_fraction"]
        lines.append(f"HBM roofline at decode ({r['decode_bytes_per_token'] / 1e9:.3g} GB per token at "
                     f"{r['copy_bytes_per_s'] / 1e9:.4g} GB/s copy, {r['decode_roofline_s_per_token'] * 1e6:.0f} us): "
                     f"split {f['split']:.2f}, unsplit {f['unsplit']:.2f} of it.")
    if r.get("decode_ratio_compiled") is not None:
        lines.append(f"The graphed step through torch.compile (`compile_decode`) in the same repeats: decode ratio "
                     f"{r['decode_ratio_compiled']:.3f}, HBM roofline fraction "
                     f"{r['decode_hbm_roofline_fraction']['split_compiled']:.2f}; its tokens equal the uncompiled "
                     f"graph's: {r['tokens_identical_compiled']}.")
    if r.get("decode_ratio_host_path") is not None:
        lines.append(f"The runtime's host path (per-layer sync, devices' one-row graphs) in the same repeats: decode "
                     f"ratio {r['decode_ratio_host_path']:.3f}; its tokens equal the graphed decode's: "
                     f"{r['tokens_identical_host_path']}.")
    if r["syncs_per_decode_step"]:
        s = r["syncs_per_decode_step"]
        lines.append(f"Host synchronizations per decode step: split {s['split']:.1f}, unsplit {s['unsplit']:.1f}.")
    return lines


def calibrate(r: dict[str, Any]) -> list[str]:
    p = r["profile"]
    if p is None:
        return [f"### (d) calibrated DeviceProfile: no fit ({r['fit_error']})"]
    return [f"### (d) calibrated DeviceProfile ({r['variant']} timings, {r['source']})", "",
            f"flops_per_s {p['flops_per_s']:.4g} ({r['flops_fraction_of_matmul_peak']:.0%} of the matmul peak), "
            f"mem_bytes_per_s {p['mem_bytes_per_s']:.4g} ({r['bandwidth_fraction_of_copy']:.0%} of the copy), "
            f"overhead_s {p['overhead_s']:.3g}; max relative residual {r['max_rel_residual']:.1%}.", "",
            f"    {r['preset_line']}"]


def main() -> None:
    out = Path(sys.argv[1])
    for name, render in (("expert_ffn", expert_ffn), ("bs_step", bs_step), ("split_vs_unsplit", split_vs_unsplit),
                         ("calibrate", calibrate)):
        path = out / f"{name}.json"
        lines = render(json.loads(path.read_text())) if path.is_file() else [f"### {name}: no result (failed)"]
        print("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
