"""Experiment (e): the latency–accuracy Pareto front of every policy, and the headline against TopK.

Each policy gets its accuracy from `wdmoe.eval` and its latency (TPOT p50, the per-request mean decode-step time)
from the simulator. The front is taken on (TPOT p50, next-token accuracy); the headline is the largest TPOT
reduction against TopK at <= 1% relative loss of next-token accuracy (`pareto.headline`).
"""

from __future__ import annotations

from typing import Any

from wdmoe.experiments import plots
from wdmoe.experiments.headline_file import HEADLINE_FILE, write_headline
from wdmoe.experiments.inputs import accuracies, experiment_trace
from wdmoe.experiments.latency import latency, write_csv
from wdmoe.experiments.pareto import Headline, headline, pareto_front, relative_loss
from wdmoe.experiments.policies import (
    PolicySpec,
    energy,
    fastest,
    joint_lagrangian,
    joint_ratio,
    random_drop,
    straggler,
    topk,
    wlr,
    wlr_cumulative,
)
from wdmoe.experiments.setup import ExperimentResult, Progress, Setup

THETAS = (0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)  # fine near 0: the 1% budget lives there
LAMBDAS = (10.0, 100.0, 1000.0, 10000.0)  # kept weight per second of layer time (lagrangian form)
DROP_P = (0.1, 0.3, 0.5)
# The field's baselines, OUR reconstructions [R] from secondary descriptions [S] (papers.md §10): the gate mass
# kept in WLR order (wlr-cum), and the share of its gate mass every token keeps (straggler, energy's rho).
CUMULATIVE = (0.6, 0.8, 0.9)
STRAGGLER = (0.6, 0.8, 0.9)
ENERGY_RHO = (0.6, 0.8, 0.9)
MAX_LOSS = 0.01
ZOOM_LOSS = 0.1  # the right panel shows the policies within 10% of TopK's accuracy
SHOWN = ("policy", "next_token_accuracy", "perplexity", "task_accuracy", "tpot_p50_s", "ttft_p50_s",
         "accuracy_loss", "tpot_reduction", "on_front")


def policies(thetas: tuple[float, ...] = THETAS, lambdas: tuple[float, ...] = LAMBDAS,
             drop_p: tuple[float, ...] = DROP_P, cumulative: tuple[float, ...] = CUMULATIVE,
             stragglers: tuple[float, ...] = STRAGGLER, energy_rho: tuple[float, ...] = ENERGY_RHO) -> list[PolicySpec]:
    return [topk(), *(wlr(t) for t in thetas), joint_ratio(), *(joint_lagrangian(lam) for lam in lambdas),
            fastest(), *(random_drop(p) for p in drop_p), *(wlr_cumulative(m) for m in cumulative),
            *(straggler(t) for t in stragglers), *(energy(r) for r in energy_rho)]


def run_pareto(setup: Setup, progress: Progress, specs: list[PolicySpec] | None = None) -> ExperimentResult:
    specs = specs or policies()
    trace = experiment_trace(setup, progress)
    scores = accuracies(setup, specs, progress)
    tick = progress.task("pareto: replays", len(specs) * setup.realizations)
    rows: list[dict[str, Any]] = []
    for spec in specs:
        row = {"policy": spec.label, "family": spec.family, "param": "" if spec.param is None else spec.param}
        rows.append(row | scores[spec.label] | latency(trace, setup.scenario, spec, setup.realizations, tick))
    labels = [r["policy"] for r in rows]
    tpot, acc = [r["tpot_p50_s"] for r in rows], [r["next_token_accuracy"] for r in rows]
    front = pareto_front(tpot, acc)
    loss = relative_loss(_array(acc), acc[0], higher_is_better=True)
    ppl_loss = relative_loss(_array([r["perplexity"] for r in rows]), rows[0]["perplexity"], higher_is_better=False)
    for i, row in enumerate(rows):
        row.update(accuracy_loss=float(loss[i]), perplexity_increase=float(ppl_loss[i]),
                   tpot_reduction=1.0 - tpot[i] / tpot[0],
                   ttft_reduction=1.0 - row["ttft_p50_s"] / rows[0]["ttft_p50_s"],
                   on_front=bool(front[i]))
    best = headline(labels, tpot, acc, "topk", MAX_LOSS)
    by_ppl = headline(labels, tpot, [r["perplexity"] for r in rows], "topk", MAX_LOSS, higher_is_better=False)
    csv = write_csv(setup.out_dir / "pareto.csv", rows)
    png = _plot(rows, (best, by_ppl), setup)
    notes = (_say(best, "next-token accuracy"), _say(by_ppl, "perplexity"), _write_headline(setup, rows))
    return ExperimentResult("pareto", csv, png, rows, SHOWN, notes)


def _write_headline(setup: Setup, rows: list[dict[str, Any]]) -> str:
    """headline.json beside pareto.csv (experiments.headline_file), or why not."""
    source = (f"wdmoe experiment pareto --realizations {setup.realizations} --max-tokens {setup.max_tokens} "
              f"(pareto.csv beside it): TPOT p50 over {setup.realizations} channel draws, accuracy on draw 0; "
              "modeled latency with our [R] radio defaults, not the papers' numbers")
    try:
        path = write_headline(setup.out_dir / HEADLINE_FILE, rows, MAX_LOSS, source)
    except ValueError as exc:
        return f"{HEADLINE_FILE} not written: {exc}"
    return f"wrote {path} (the points `wdmoe demo` prints; copy it to wdmoe/data/results/ to ship it)"


def _array(values: list[float]) -> Any:
    import numpy as np

    return np.asarray(values, dtype=float)


def _say(h: Headline | None, metric: str) -> str:
    if h is None:
        return f"{metric}: no policy is faster than TopK"
    verdict = "within" if h.within else "NOT within (closest point)"
    return (f"{metric}: {h.label} cuts TPOT p50 by {100 * h.latency_reduction:.1f}% at a {100 * h.accuracy_loss:.2f}% "
            f"relative {metric} loss, {verdict} the {100 * h.max_loss:g}% budget")


def _plot(rows: list[dict[str, Any]], marks: tuple[Headline | None, ...], setup: Setup) -> Any:
    fig, (full, zoom) = plots.figure(2, width=6.0, height=4.6)
    for ax in (full, zoom):
        _draw(ax, rows, marks)
    ref = rows[0]
    near = [r for r in rows if r["next_token_accuracy"] >= (1 - ZOOM_LOSS) * ref["next_token_accuracy"]]
    lat = plots.ms([r["tpot_p50_s"] for r in near])
    acc = [r["next_token_accuracy"] for r in near]
    zoom.set_xlim(0.9 * min(lat), 1.06 * max(lat))
    zoom.set_ylim(min(acc) - 0.1 * (max(acc) - min(acc)), max(acc) + 0.15 * (max(acc) - min(acc)))
    plots.finish(full, "TPOT p50 (ms, modeled)", "held-out next-token accuracy",
                 f"all policies; {setup.realizations} channel draws, accuracy on draw 0", legend=False)
    plots.finish(zoom, "TPOT p50 (ms, modeled)", "held-out next-token accuracy",
                 f"zoom: within {100 * ZOOM_LOSS:g}% of TopK's accuracy")
    return plots.save(fig, setup.out_dir / "pareto.png", "Latency–accuracy trade-off of every policy")


def _short(row: dict[str, Any]) -> str:
    name = str(row["policy"]).removeprefix(row["family"]).strip() or row["family"]
    return name.replace("theta", "θ").replace("lambda", "λ")


def _draw(ax: Any, rows: list[dict[str, Any]], marks: tuple[Headline | None, ...]) -> None:
    families = list(dict.fromkeys(r["family"] for r in rows))
    color = plots.colors(families)
    for family in families:
        mine = [r for r in rows if r["family"] == family]
        ax.scatter(plots.ms([r["tpot_p50_s"] for r in mine]), [r["next_token_accuracy"] for r in mine], s=36,
                   color=color[family], label=family, zorder=3)
    for r in rows:
        ax.annotate(_short(r), (1e3 * r["tpot_p50_s"], r["next_token_accuracy"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points", clip_on=True)
    front = sorted((r for r in rows if r["on_front"]), key=lambda r: r["tpot_p50_s"])
    ax.plot(plots.ms([r["tpot_p50_s"] for r in front]), [r["next_token_accuracy"] for r in front], "k--", lw=1,
            drawstyle="steps-post", label="Pareto front", zorder=2)
    ref = rows[0]["next_token_accuracy"]
    ax.axhspan((1 - MAX_LOSS) * ref, ref, color="0.85", zorder=1, label="≤ 1% below TopK")
    for mark, (edge, metric) in zip(marks, (("red", "accuracy"), ("blue", "perplexity")), strict=False):
        if mark is not None and mark.within:
            chosen = next(r for r in rows if r["policy"] == mark.label)
            ax.scatter([1e3 * chosen["tpot_p50_s"]], [chosen["next_token_accuracy"]], s=170, facecolors="none",
                       edgecolors=edge, zorder=4, label=f"best ≤ 1% {metric} loss: {_short(chosen)}")
