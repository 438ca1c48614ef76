"""A simulation grid: every scenario x policy x channel realization of one trace, summarised per (scenario, policy).

Contract: realization r of a scenario replays with seed `scenario.seed + r`, so realization 0 is the live run's
channel; each replay gets a fresh policy from `make_policy` (the random baseline seeded by the same seed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from wdmoe.config import Scenario
from wdmoe.policy.factory import make_policy
from wdmoe.sim.report import summarize
from wdmoe.sim.simulate import replay
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
