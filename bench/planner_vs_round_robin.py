"""The CoEL planner against round-robin placement and against no compression (issue #7, item 5).

On a cluster file (default configs/clusters/lab.toml) and the shipped model, for each configuration:
expected per-token latency (the radio model, wdmoe.plan.cost: MODELED, not measured), expert bytes per device
against each device's free memory, and held-out perplexity / next-token accuracy of the split model (wdmoe.eval,
measured on the CPU; with the model's own top-k the placement does not change the outputs, the bit widths do).

    .venv/bin/python bench/planner_vs_round_robin.py [--cluster FILE] [--tokens 2048] [--json]

Writes docs/figures/planner-{latency,memory,accuracy}.png and planner-results.json. Every number is ours [R];
none is CoEL's (papers.md §4 publishes no such table).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wdmoe.plan.calibrate import calibrate
from wdmoe.plan.cluster import Cluster, load_cluster
from wdmoe.plan.deployment import Copies, copies_memory_bytes, round_robin_copies
from wdmoe.plan.planner import PlannerConfig, copies_latency_s, plan_deployment
from wdmoe.plan.quantize_assign import assign_bits
from wdmoe.plan.requirement import ModelRequirement

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "figures"


@dataclass(frozen=True)
class Row:
    """One configuration: placement, widths, modeled latency (s/token), bytes per device, fits, accuracy."""

    name: str
    placement: str
    bits: str
    latency_ms: float
    expert_bytes: int
    memory_bytes: list[int]
    fits: bool
    perplexity: float
    next_token_accuracy: float


def mixed_bits(req: ModelRequirement, budget_fraction: float) -> np.ndarray:
    """(L, E) widths from CoEL's popularity x importance rule under `budget_fraction` of the fp32 experts' bytes."""
    sizes = {b: float(req.bytes_for(np.full(req.popularity.shape, b))[0, 0]) for b in (32, 8, 4)}
    table = assign_bits(req.popularity, req.importance, sizes, budget_fraction * float(req.bytes_for().sum()))
    return np.array([[table[(pos, e)] for e in range(req.num_experts)] for pos in range(req.num_layers)])


def accuracy(
    model_dir: Path, copies: Copies, bits: np.ndarray, req: ModelRequirement, tokens: int
) -> tuple[float, float]:
    """Held-out (perplexity, next-token accuracy) of the model split with these copies and widths."""
    from wdmoe.eval.evaluate import heldout_documents
    from wdmoe.eval.language import language_scores
    from wdmoe.model.shipped import HELDOUT_TEXT
    from wdmoe.model.split import load_hf_model, split_model
    from wdmoe.placement import Placement
    from wdmoe.runtime.model import DistributedMoE

    num_devices = 1 + max(d for row in copies for ids in row for d in ids)
    placement = Placement(
        num_devices, req.num_experts, {layer: copies[pos] for pos, layer in enumerate(req.moe_layers)}
    )
    widths = {(layer, e): int(bits[pos, e]) for pos, layer in enumerate(req.moe_layers) for e in range(req.num_experts)}
    with tempfile.TemporaryDirectory(prefix="wdmoe-bench-") as tmp:
        split_model(load_hf_model(model_dir), Path(tmp) / "split", num_devices, placement, model_dir, widths)
        model = DistributedMoE.from_pretrained(Path(tmp) / "split")
        scores = language_scores(model, heldout_documents(model, HELDOUT_TEXT, tokens))
        model.close()
    return scores.perplexity, scores.next_token_accuracy


def run(model_dir: Path, cluster: Cluster, tokens: int) -> list[Row]:
    req, _ = calibrate(model_dir, max_tokens=tokens)
    statuses, radio = cluster.statuses, cluster.radio
    free = np.array([s.free_memory_bytes for s in statuses])
    rr = round_robin_copies(req.num_layers, req.num_experts, len(statuses))
    configs: list[tuple[str, str, np.ndarray, str]] = [
        ("round-robin fp32", "round-robin", req.check_bits(None), "fp32"),
        ("round-robin int8", "round-robin", np.full(req.popularity.shape, 8), "int8"),
        ("planner fp32", "planner", req.check_bits(None), "fp32"),
        ("planner int8", "planner", np.full(req.popularity.shape, 8), "int8"),
        ("planner int4", "planner", np.full(req.popularity.shape, 4), "int4"),
        ("planner mixed (50% budget)", "planner", mixed_bits(req, 0.5), "mixed 32/8/4"),
    ]
    rows, scored = [], {}
    for name, kind, bits, label in configs:
        if kind == "planner":
            plan = plan_deployment(req, statuses, radio, bits, PlannerConfig(allow_intra=False))
            copies, latency_s = plan.copies, plan.expected_latency_s
        else:
            copies, latency_s = rr, copies_latency_s(rr, req, statuses, radio, bits)
        sizes = req.bytes_for(bits)
        memory = copies_memory_bytes(copies, sizes, len(statuses))
        key = bits.tobytes()  # placement does not change top-k outputs: score each width table once
        if key not in scored:
            scored[key] = accuracy(model_dir, copies, bits, req, tokens)
        ppl, acc = scored[key]
        rows.append(
            Row(
                name,
                kind,
                label,
                latency_s * 1e3,
                int(sizes.sum()),
                memory.tolist(),
                bool(np.all(memory <= free)),
                ppl,
                acc,
            )
        )
    return rows


def table(rows: list[Row], cluster: Cluster) -> str:
    names = [s.device for s in cluster.statuses]
    lines = [
        f"{'configuration':28} {'ms/token':>9} {'experts MB':>10} {'fits':>5} {'max use':>8} {'ppl':>8} {'acc':>6}",
    ]
    free = np.array([s.free_memory_bytes for s in cluster.statuses])
    for r in rows:
        use = np.array(r.memory_bytes) / free
        lines.append(
            f"{r.name:28} {r.latency_ms:9.3f} {r.expert_bytes / 1e6:10.2f} {'yes' if r.fits else 'NO':>5} "
            f"{use.max():8.0%} {r.perplexity:8.3f} {r.next_token_accuracy:6.3f}"
        )
    lines.append(f"devices: {', '.join(names)}; latency MODELED by wdmoe.radio; ppl/acc measured on held-out text")
    return "\n".join(lines)


def figures(rows: list[Row], cluster: Cluster, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.barh(
        [r.name for r in rows],
        [r.latency_ms for r in rows],
        color=["#999" if "round" in r.name else "#2a6" for r in rows],
    )
    ax.set_xlabel("expected ms per token (modeled, radio model)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out / "planner-latency.png", dpi=120)
    names = [s.device for s in cluster.statuses]
    free = np.array([s.free_memory_bytes for s in cluster.statuses]) / 1e6
    shown = [r for r in rows if r.name in ("round-robin fp32", "planner fp32", "planner int8", "planner int4")]
    fig, ax = plt.subplots(figsize=(8, 3.4))
    width = 0.8 / len(shown)
    x = np.arange(len(names))
    for k, r in enumerate(shown):
        ax.bar(x + k * width, np.array(r.memory_bytes) / 1e6, width, label=r.name)
    ax.scatter(x + 0.4 - width / 2, free, marker="_", s=400, color="k", label="free memory", zorder=3)
    ax.set_xticks(x + 0.4 - width / 2, names)
    ax.set_ylabel("expert MB held")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "planner-memory.png", dpi=120)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for r in rows:
        ax.scatter(r.expert_bytes / 1e6, r.perplexity, label=r.name)
    ax.set_xlabel("expert MB (all devices)")
    ax.set_ylabel("held-out perplexity")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "planner-accuracy.png", dpi=120)
    plt.close("all")


def main() -> None:
    from wdmoe.model.shipped import default_model_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", type=Path, default=ROOT / "configs" / "clusters" / "lab.toml")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--tokens", type=int, default=2048, help="held-out tokens for calibration and accuracy")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path, default=FIGURES)
    args = parser.parse_args()
    cluster = load_cluster(args.cluster)
    rows = run(args.model or default_model_dir(), cluster, args.tokens)
    args.out.mkdir(parents=True, exist_ok=True)
    figures(rows, cluster, args.out)
    result: dict[str, Any] = {"cluster": str(args.cluster), "tokens": args.tokens, "rows": [asdict(r) for r in rows]}
    (args.out / "planner-results.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1) if args.json else table(rows, cluster))


if __name__ == "__main__":
    main()
