"""The rich tables of `wdmoe simulate --users N`: the cell per (scenario, policy), then each user's percentiles."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def cell_tables(cells: list[dict[str, Any]]) -> list[Table]:
    """One table of the whole cell per (scenario, policy), then one per (scenario, policy) with a row per user."""
    first = cells[0]["arrival"] if cells else {}
    rate = first.get("rate_per_s_per_user")
    how = f"Poisson, {rate:g}/s per user" if rate is not None else "closed loop"
    overall = Table(title=f"cell of {first.get('users')} users ({how}, {first.get('schedule')} steps), modeled s; "
                    "TTFT includes queueing")
    for column in ("scenario", "policy", "requests", "TTFT p50", "p95", "p99", "TPOT p50", "p95", "p99",
                   "queue p50", "tokens/s", "batch mean"):
        overall.add_column(column, justify="right")
    tables = [overall]
    for c in cells:
        o = c["overall"]
        ttft, tpot = o["ttft_s"], o["tpot_s"]
        overall.add_row(c["scenario"], c["policy"], str(o["requests"]), _s(ttft["p50"]), _s(ttft["p95"]),
                        _s(ttft["p99"]), _s(tpot["p50"]), _s(tpot["p95"]), _s(tpot["p99"]),
                        _s(o["queue_s"]["p50"]), "-" if c["tokens_per_s"] is None else f"{c['tokens_per_s']:.2f}",
                        f"{c['batch_size_mean']:.1f}")
        users = Table(title=f"per user: {c['scenario']}, {c['policy']} (modeled s)")
        for column in ("user", "requests", "TTFT p50", "p95", "p99", "TPOT p50", "p95", "p99", "e2e p50"):
            users.add_column(column, justify="right")
        for u in c["per_user"]:
            users.add_row(str(u["user"]), str(u["requests"]), _s(u["ttft_s"]["p50"]), _s(u["ttft_s"]["p95"]),
                          _s(u["ttft_s"]["p99"]), _s(u["tpot_s"]["p50"]), _s(u["tpot_s"]["p95"]),
                          _s(u["tpot_s"]["p99"]), _s(u["e2e_s"]["p50"]))
        tables.append(users)
    return tables
