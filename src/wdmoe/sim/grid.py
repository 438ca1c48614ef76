"""A simulation grid: every scenario x policy x channel realization of one trace, summarised per (scenario, policy);
one request at a time (`simulate_grid`) or a cell of many users (`simulate_cells`, `wdmoe.sim.cell`).

Contract: realization r of a scenario replays with seed `scenario.seed + r`, so realization 0 is the live run's
channel; each replay gets a fresh policy from `make_policy` (the random baseline seeded by the same seed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from wdmoe.config import Scenario
from wdmoe.policy.factory import make_policy
from wdmoe.sim.cell import Arrival, radio_step, run_cell
from wdmoe.sim.cell_report import summarize_cell
from wdmoe.sim.report import summarize
from wdmoe.sim.simulate import make_decider, replay
from wdmoe.sim.trace import Trace


def simulate_grid(trace: Trace, scenarios: Mapping[str, Scenario], policies: Sequence[str], theta: float = 0.5,
                  realizations: int = 1, batched: bool = True,
                  on_replay: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """One summary per (scenario, policy), in the order given; `on_replay` is called after every replay."""
    if realizations < 1:
        raise ValueError(f"realizations = {realizations}: need at least 1 channel realization")
    summaries = []
    for name, scenario in scenarios.items():
        for policy in policies:
            replays = []
            for r in range(realizations):
                seed = scenario.seed + r
                replays.append(replay(trace, scenario, make_policy(policy, theta=theta, seed=seed), seed, batched))
                if on_replay is not None:
                    on_replay()
            summaries.append(summarize(trace, replays, name, theta))
    return summaries


def simulate_cells(trace: Trace, scenarios: Mapping[str, Scenario], policies: Sequence[str], arrival: Arrival,
                   users: int, per_user: int, theta: float = 0.5, realizations: int = 1, max_batch: int = 64,
                   on_step: Callable[[int], None] | None = None, prefill_first: bool = True) -> list[dict[str, Any]]:
    """One cell summary per (scenario, policy) (`wdmoe.sim.cell_report.summarize_cell`): realization r runs with
    seed `scenario.seed + r` for the channel, the policy and the arrivals (the same arrivals for every policy).
    `prefill_first` (default, as `wdmoe serve`'s engine) or mixed steps: `wdmoe.runtime.admission.Slots.batch`."""
    if realizations < 1:
        raise ValueError(f"realizations = {realizations}: need at least 1 channel realization")
    summaries = []
    for name, scenario in scenarios.items():
        for policy in policies:
            runs, seeds = [], [scenario.seed + r for r in range(realizations)]
            for seed in seeds:
                requests, follow_up = arrival.requests(np.random.default_rng(seed), trace, users, per_user)
                decider = make_decider(trace, scenario, make_policy(policy, theta=theta, seed=seed), seed)
                runs.append(run_cell(requests, radio_step(trace, decider), max_batch, follow_up, on_step,
                                     prefill_first))
            summaries.append(summarize_cell(runs, name, policy, arrival.describe() | {
                "users": users, "requests_per_user": per_user, "max_batch": max_batch,
                "schedule": "prefill-first" if prefill_first else "mixed"}, seeds))
    return summaries
