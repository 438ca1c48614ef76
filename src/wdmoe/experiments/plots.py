"""Figure helpers: matplotlib on the Agg backend (no display), small PNGs, one color per policy label."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use(): the backend is chosen before pyplot loads

from wdmoe.atomic import write_atomic

DPI = 100  # keeps a 2-panel figure well under 200 KB


def figure(ncols: int, nrows: int = 1, width: float = 5.2, height: float = 3.8) -> tuple[Any, list[Any]]:
    """A figure of nrows x ncols panels, returned as a flat list of axes."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    return fig, list(axes.ravel())


def colors(labels: Sequence[str]) -> dict[str, Any]:
    """A stable color per label, in order (tab10, then tab20 beyond ten labels)."""
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def log_y(ax: Any) -> None:
    """A log y axis labelled with plain numbers (1, 2, 3, 5, 10, ...), not powers of ten."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 3.0, 5.0)))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())


def finish(ax: Any, xlabel: str, ylabel: str, title: str, legend: bool = True) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if legend:
        ax.legend(fontsize=8)


def save(fig: Any, path: Path, title: str) -> Path:
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format=path.suffix.lstrip(".") or "png"))
    plt.close(fig)
    return path


def ms(values: Sequence[Any]) -> list[float]:
    """Seconds to milliseconds (None stays nan)."""
    return [float("nan") if v is None else 1e3 * float(v) for v in values]


def latency_curves(rows: Sequence[dict[str, Any]], labels: Sequence[str], x_key: str, xlabel: str) -> tuple[Any, Any]:
    """A figure of TPOT (p50 solid, p95 dotted) and TTFT p50 against `x_key`, one colour per policy label."""
    fig, (tpot, ttft) = figure(2)
    color = colors(labels)
    for label in labels:
        mine = [r for r in rows if r["policy"] == label]
        x = [r[x_key] for r in mine]
        tpot.plot(x, ms([r["tpot_p50_s"] for r in mine]), "o-", color=color[label], label=f"{label} p50")
        tpot.plot(x, ms([r["tpot_p95_s"] for r in mine]), ":", color=color[label])
        ttft.plot(x, ms([r["ttft_p50_s"] for r in mine]), "o-", color=color[label], label=label)
    for ax in (tpot, ttft):
        log_y(ax)
    finish(tpot, xlabel, "TPOT (ms, log)", "time per output token: p50 (solid), p95 (dotted)")
    finish(ttft, xlabel, "TTFT p50 (ms, log)", "time to first token, p50")
    return fig, (tpot, ttft)
