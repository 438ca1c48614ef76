"""The Pareto experiment's headline points as a small JSON file, the numbers `wdmoe demo` prints beside its rows.

Contract: `headline_points(rows, max_loss)` picks three rows of the Pareto experiment (experiments.frontier):

    reference  TopK (the first row);
    headline   the joint policy's point with the largest TPOT p50 cut among those within `max_loss` of TopK on
               both held-out next-token accuracy and perplexity (docs/results.md's headline);
    wlr        WLR's point with the largest TPOT p50 cut within `max_loss` on next-token accuracy alone;

`write_headline` stores them with where they come from in `--out-dir` (`headline.json`, next to pareto.csv);
the package ships a copy made from docs/figures (`SHIPPED_HEADLINE`; nothing writes inside the package, and
tests/unit/experiments/test_headline_file.py holds it equal to docs/figures/pareto.csv and docs/results.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from wdmoe.atomic import write_text_atomic
from wdmoe.experiments.policies import PolicySpec, joint_lagrangian, joint_ratio, topk, wlr

HEADLINE_FILE = "headline.json"
SHIPPED_HEADLINE = Path(__file__).resolve().parent.parent / "data" / "results" / HEADLINE_FILE
ROLES = ("reference", "headline", "wlr")


@dataclass(frozen=True)
class HeadlinePoint:
    """One Pareto row: its role, policy label, family and parameter (θ, λ; None for none), held-out accuracy and
    perplexity, TPOT p50 (s), and the relative accuracy loss, perplexity rise and TPOT p50 cut against TopK."""

    role: str
    policy: str
    family: str
    param: float | None
    next_token_accuracy: float
    perplexity: float
    tpot_p50_s: float
    accuracy_loss: float
    perplexity_increase: float
    tpot_reduction: float

    def spec(self) -> PolicySpec:
        """The experiment's policy of this point (`PolicySpec.build` makes it)."""
        if self.family == "topk":
            return topk()
        if self.family == "wlr" and self.param is not None:
            return wlr(self.param)
        if self.family == "joint":
            return joint_ratio() if self.param is None else joint_lagrangian(self.param)
        raise ValueError(f"headline point {self.policy!r}: family {self.family!r} has no policy here")


@dataclass(frozen=True)
class Headline:
    """The points (in ROLES order), the loss budget they were chosen under and where they come from."""

    source: str
    max_loss: float
    points: tuple[HeadlinePoint, ...]

    def point(self, role: str) -> HeadlinePoint:
        return next(p for p in self.points if p.role == role)


def _point(role: str, row: dict[str, Any]) -> HeadlinePoint:
    param = row["param"]
    return HeadlinePoint(role, str(row["policy"]), str(row["family"]),
                         None if param in ("", None) else float(param), float(row["next_token_accuracy"]),
                         float(row["perplexity"]), float(row["tpot_p50_s"]), float(row["accuracy_loss"]),
                         float(row["perplexity_increase"]), float(row["tpot_reduction"]))


def headline_points(rows: Sequence[dict[str, Any]], max_loss: float) -> tuple[HeadlinePoint, ...]:
    """The reference, headline and wlr points of the module docstring; ValueError when a role has no point."""
    points = [_point("reference", rows[0])]
    for role, family, metrics in (("headline", "joint", ("accuracy_loss", "perplexity_increase")),
                                  ("wlr", "wlr", ("accuracy_loss",))):
        within = [r for r in rows if r["family"] == family and float(r["tpot_reduction"]) > 0.0
                  and all(float(r[m]) <= max_loss for m in metrics)]
        if not within:
            raise ValueError(f"no {family} point is faster than TopK within {100 * max_loss:g}% on "
                             f"{' and '.join(metrics)}")
        points.append(_point(role, max(within, key=lambda r: float(r["tpot_reduction"]))))
    return tuple(points)


def write_headline(path: Path, rows: Sequence[dict[str, Any]], max_loss: float, source: str) -> Path:
    headline = Headline(source, max_loss, headline_points(rows, max_loss))
    write_text_atomic(path, json.dumps(asdict(headline), indent=1) + "\n")
    return path


def load_headline(path: Path = SHIPPED_HEADLINE) -> Headline:
    data = json.loads(path.read_text(encoding="utf-8"))
    points = tuple(HeadlinePoint(**p) for p in data["points"])
    if tuple(p.role for p in points) != ROLES:
        raise ValueError(f"{path}: the points' roles are {[p.role for p in points]}, expected {list(ROLES)}")
    return Headline(str(data["source"]), float(data["max_loss"]), points)
