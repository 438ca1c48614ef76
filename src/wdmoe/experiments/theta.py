"""Experiment (a): accuracy and modeled latency of WLR against its threshold θ, TopK as the reference line.

Accuracy: held-out perplexity, next-token accuracy and task accuracy (`inputs.accuracies`); latency: TTFT and
TPOT p50/p95 of the recorded trace replayed over the scenario's channel realizations.
"""

from __future__ import annotations

from typing import Any

from wdmoe.experiments import plots
from wdmoe.experiments.inputs import accuracies, experiment_trace
from wdmoe.experiments.latency import latency, write_csv
from wdmoe.experiments.policies import topk, wlr
from wdmoe.experiments.setup import ExperimentResult, Progress, Setup

THETAS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
SHOWN = ("policy", "perplexity", "next_token_accuracy", "task_accuracy", "experts_per_token", "ttft_p50_s",
         "tpot_p50_s", "tpot_p95_s")


def run_theta(setup: Setup, progress: Progress, thetas: tuple[float, ...] = THETAS) -> ExperimentResult:
    trace = experiment_trace(setup, progress)
    specs = [topk(), *(wlr(t) for t in thetas)]
    scores = accuracies(setup, specs, progress)
    tick = progress.task("theta: replays", len(specs) * setup.realizations)
    rows: list[dict[str, Any]] = []
    for spec in specs:
        row = {"policy": spec.label, "theta": "" if spec.param is None else spec.param, **scores[spec.label]}
        rows.append(row | latency(trace, setup.scenario, spec, setup.realizations, tick))
    csv = write_csv(setup.out_dir / "theta.csv", rows)
    png = _plot(rows, setup)
    return ExperimentResult("theta", csv, png, rows, SHOWN)


def _plot(rows: list[dict[str, Any]], setup: Setup) -> Any:
    ref, sweep = rows[0], rows[1:]
    theta = [r["theta"] for r in sweep]
    fig, (ppl, acc, ttft, tpot) = plots.figure(2, 2, width=5.0, height=3.5)
    ppl.plot(theta, [r["perplexity"] for r in sweep], "o-", color="C0", label="WLR")
    ppl.axhline(ref["perplexity"], color="k", ls="--", lw=1, label="TopK")
    plots.finish(ppl, "WLR threshold θ", "held-out perplexity", "perplexity (lower is better)")
    for key, name, color in (("next_token_accuracy", "next-token", "C0"), ("task_accuracy", "continuation task",
                                                                              "C2")):
        acc.plot(theta, [r[key] for r in sweep], "o-", color=color, label=f"WLR, {name}")
        acc.axhline(ref[key], color=color, ls="--", lw=1, label=f"TopK, {name}")
    plots.finish(acc, "WLR threshold θ", "accuracy", "accuracy (higher is better)")
    for ax, stem, title in ((ttft, "ttft", "time to first token"), (tpot, "tpot", "time per output token")):
        for q, style in (("p50", "o-"), ("p95", "s:")):
            ax.plot(theta, plots.ms([r[f"{stem}_{q}_s"] for r in sweep]), style, color="C1", label=f"WLR {q}")
            ax.axhline(1e3 * ref[f"{stem}_{q}_s"], color="k", ls="--" if q == "p50" else ":", lw=1,
                       label=f"TopK {q}")
        plots.log_y(ax)
        plots.finish(ax, "WLR threshold θ", "modeled latency (ms, log)", f"{title}, {setup.realizations} channel draws")
    return plots.save(fig, setup.out_dir / "theta.png", "WLR threshold sweep: accuracy and modeled latency")
