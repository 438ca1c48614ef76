"""`wdmoe ensemble`: MoE² over the shipped edge LLM experts (train-gate, select, run, eval); docs/ensemble.md."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from wdmoe.cli.common import JsonOut, console, offline, print_json, progress_bar, user_errors
from wdmoe.errors import WdmoeError

app = typer.Typer(
    help="MoE²: a trained gate and budgeted selection over heterogeneous edge LLMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EnergyBudget = Annotated[float, typer.Option(help="E_max: joules per request (worst case over the top-k).")]
DelayBudget = Annotated[float, typer.Option(help="T_max: seconds per request, the same for every category.")]


def _gate_kwargs(gate_dir: Path | None) -> dict[str, Any]:
    if gate_dir is None:
        return {}
    if not (gate_dir / "gate.json").is_file():
        raise WdmoeError(f"--gate {gate_dir}: no gate.json there; give a directory `wdmoe ensemble train-gate --out` "
                         "wrote")
    return {"gate_dir": gate_dir}


GateDir = Annotated[
    Path | None,
    typer.Option("--gate", help="A gate directory `wdmoe ensemble train-gate --out` wrote (default: the shipped one)."),
]


@app.command("train-gate")
def train_gate(
    out: Annotated[
        Path, typer.Option(help="Directory for gate.safetensors, gate.json and crossfit.npz (created; files replaced "
                           "atomically). Use it with `--gate` in select/run/eval.")
    ] = Path("wdmoe-gate"),
    rescore: Annotated[
        bool,
        typer.Option(
            "--rescore/--no-rescore", metavar="", help="Run every expert on the task again first (minutes); the "
            "scores go to --out too."
        ),
    ] = False,
    repeats: Annotated[
        int, typer.Option(min=1, help="Cross-fitting repeats (5 folds each); fewer is faster and noisier.")
    ] = 10,
    json_out: JsonOut = False,
) -> None:
    """Train the gate once on the full expert set (mixture cross-entropy on the task's train split) and save it,
    then the cross-fitted tables of the coarse oracle: the gate retrained per fold of train + val, 5 x --repeats
    fits (about 30 s on a 2-core CPU at the default 10; --rescore adds minutes; a progress bar on stderr)."""
    offline()
    with user_errors():
        if out.exists() and not out.is_dir():
            raise WdmoeError(f"--out {out}: exists and is not a directory; give a directory for the gate files")
        from wdmoe.ensemble import crossfit, gate, scores

        if rescore:
            from wdmoe.ensemble.embed import SentenceEncoder
            from wdmoe.ensemble.experts import load_workers
            from wdmoe.ensemble.task import load_categorized

            workers, items = load_workers(), load_categorized()
            scores.save(scores.precompute(workers, items, SentenceEncoder()), out / scores.SCORES_FILE.name)
            scores.save_meta(scores.task_meta(workers, items), out / scores.META_FILE.name)
            data = scores.load(out / scores.SCORES_FILE.name)
        else:
            data = scores.load()
        train, val = data.take("train"), data.take("val")

        fitted, fit = gate.train_gate(
            data.expert_names,
            train.embeddings,
            crossfit.routing_probs(train),
            val.embeddings,
            crossfit.routing_probs(val),
        )
        gate.save_gate(fitted, out, fit=fit)
        with progress_bar(not json_out) as bar:
            task = bar.add_task("cross-fitting the gate", total=crossfit.FOLDS * repeats)
            tables = crossfit.crossfit(
                data, repeats=repeats, progress=lambda done, _total: bar.update(task, completed=done)
            )
        crossfit.save(tables, out / crossfit.CROSSFIT_FILE.name)
        result = {**asdict(fit), "saved": str(out)}
    if json_out:
        print_json(result)
        return
    console.print(
        f"gate saved to {out}: mixture loss {fit.train_loss:.3f} (train), {fit.val_loss:.3f} "
        f"(val) nats at epoch {fit.best_epoch}; use it with `--gate {out}`",
        highlight=False,
    )


@app.command("select")
def select(
    energy_budget: EnergyBudget = math.inf,
    delay_budget: DelayBudget = math.inf,
    gate_dir: GateDir = None,
    json_out: JsonOut = False,
) -> None:
    """The coarse level: the subset S* of experts under the budgets (polyblock search, checked exhaustively)."""
    offline()
    with user_errors():
        from wdmoe.ensemble.costs import subset_delay_s, subset_energy_j
        from wdmoe.ensemble.selection import SearchMethod, coarse_select
        from wdmoe.ensemble.system import EnsembleSystem

        system = EnsembleSystem.load(**_gate_kwargs(gate_dir))
        problem = system.problem(energy_budget, delay_budget, system.top_k)
        found = coarse_select(problem, system.utility, SearchMethod.POLYBLOCK)
        check = coarse_select(problem, system.utility, SearchMethod.EXHAUSTIVE)
        members = sorted(found.subset)
        result: dict[str, Any] = {
            "subset": [system.names[n] for n in members],
            "active": [system.names[n] for n in sorted(system.active_subset(found.subset))],
            "estimator": system.estimator,
            "estimated_accuracy": found.value,
            "exhaustive_estimated_accuracy": check.value,
            "evaluated_fraction": found.evaluated_fraction,
            "worst_case_energy_j": subset_energy_j(problem.energy_j, members, problem.top_k),
            "worst_case_delay_s": dict(
                zip(
                    system.costs.category_names,
                    subset_delay_s(problem.delay_s, members, problem.aggregation_s).tolist(),
                    strict=True,
                )
            ),
            "top_k": system.top_k,
        }
    if json_out:
        print_json(result)
        return
    console.print(
        f"S* = {{{', '.join(result['subset'])}}}, routed among {{{', '.join(result['active'])}}}: estimated "
        f"({system.estimator}) accuracy {found.value:.3f} (exhaustive "
        f"{check.value:.3f}); {found.evaluated_fraction:.0%} of the subsets evaluated; worst case "
        f"{result['worst_case_energy_j'] * 1e3:.3f} mJ and "
        f"{max(result['worst_case_delay_s'].values()) * 1e3:.3f} ms per request (top-{system.top_k})"
    )


@app.command("run")
def run(
    prompt: Annotated[str, typer.Argument(help="The prompt to continue.")],
    energy_budget: EnergyBudget = math.inf,
    delay_budget: DelayBudget = math.inf,
    gate_dir: GateDir = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate at most.")] = 24,
    json_out: JsonOut = False,
) -> None:
    """Generate with the ensemble: S* under the budgets, the gate's top-k of S* for this prompt, mixed next tokens."""
    offline()
    with user_errors():
        from transformers.utils import logging as hf_logging

        from wdmoe.ensemble.embed import SentenceEncoder
        from wdmoe.ensemble.experts import load_workers

        hf_logging.disable_progress_bar()  # keep --json output one JSON object
        from wdmoe.ensemble.generate import ensemble_generate
        from wdmoe.ensemble.selection import coarse_select, fine_select
        from wdmoe.ensemble.system import EnsembleSystem

        system = EnsembleSystem.load(**_gate_kwargs(gate_dir))
        picked = coarse_select(system.problem(energy_budget, delay_budget, system.top_k), system.utility).subset
        subset = system.active_subset(picked)  # the T ⊆ S* of best estimated accuracy (the monotone utility)
        probs = system.gate.probs(SentenceEncoder().encode([prompt]))  # (1, N)
        routing = fine_select(probs, subset, system.top_k)
        index, weight = routing.index[0].tolist(), routing.weight[0].tolist()
        out = ensemble_generate(load_workers(), index, weight, prompt, max_new_tokens)
        result: dict[str, Any] = {
            "prompt": prompt,
            "text": out.text,
            "tokens": out.tokens,
            "subset": [system.names[n] for n in sorted(subset)],
            "experts": {system.names[n]: w for n, w in zip(index, weight, strict=True)},
            "compute_s": out.compute_s,
        }
    if json_out:
        print_json(result)
        return
    chosen = ", ".join(f"{name} {w:.2f}" for name, w in result["experts"].items())
    console.print(
        f"[bold]{prompt}[/bold]{out.text}\n[dim]S* = {{{', '.join(result['subset'])}}}; answered by "
        f"{chosen}; {out.tokens} tokens[/dim]",
        highlight=False,
    )


@app.command("eval")
def eval_(
    energy_budget: EnergyBudget = math.inf,
    delay_budget: DelayBudget = math.inf,
    gate_dir: GateDir = None,
    json_out: JsonOut = False,
) -> None:
    """Test accuracy on the local task under the budgets: MoE² against the baselines."""
    offline()
    with user_errors():
        from wdmoe.ensemble.system import POLICIES, EnsembleSystem

        system = EnsembleSystem.load(**_gate_kwargs(gate_dir))
        results = [system.run_policy(policy, energy_budget, delay_budget) for policy in POLICIES]
    if json_out:
        print_json(
            {
                "energy_budget_j": energy_budget,
                "delay_budget_s": delay_budget,
                "items": system.test.num_items,
                "policies": [asdict(r) for r in results],
            }
        )
        return
    for r in results:
        console.print(
            f"{r.policy:18s} accuracy {r.test_accuracy:.3f}  energy {r.mean_energy_j * 1e3:8.3f} mJ  "
            f"{{{', '.join(r.subset)}}}",
            highlight=False,
        )
