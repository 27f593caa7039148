"""The PNG plot of a sweep: throughput, TTFT and TPOT against adapter count or against rate.

With several adapter counts the x axis is the adapter count (log scale), one line per rate, and
the base model (adapter count 0) is drawn as a dashed horizontal line: the ceiling. Otherwise the
x axis is the offered rate, one line per adapter count, and ``inf`` (saturation) points are drawn
as dashed horizontal lines. matplotlib is imported here only (the ``bench`` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_points"]

# (title, summary path, scale to display units, unit)
_PANELS: tuple[tuple[str, tuple[str, str], float, str], ...] = (
    ("Throughput", ("throughput", "output_tokens_per_s"), 1.0, "output tokens/s"),
    ("TTFT", ("ttft_s", "{q}"), 1.0, "s"),
    ("TPOT", ("tpot_s", "{q}"), 1000.0, "ms"),
)


def _value(point: dict[str, Any], path: tuple[str, str], q: str, scale: float) -> float | None:
    value = point["summary"][path[0]][path[1].format(q=q)]
    return None if value is None else float(value) * scale


def plot_points(points: list[dict[str, Any]], path: Path, title: str = "lorax-bench") -> None:
    """Draw the sweep's points into a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted({p["num_adapters"] for p in points if p["num_adapters"] > 0})
    by_adapters = len(counts) > 1
    fig, axes = plt.subplots(1, len(_PANELS), figsize=(6 * len(_PANELS), 4.5), squeeze=False)
    for ax, (panel, field, scale, unit) in zip(axes[0], _PANELS, strict=True):
        quantiles = ("p50",) if panel == "Throughput" else ("p50", "p99")
        if by_adapters:
            series = sorted(
                {p["rate"] for p in points}, key=lambda r: [q["rate"] for q in points].index(r)
            )
            for i, rate in enumerate(series):
                color = f"C{i % 10}"
                members = [p for p in points if p["rate"] == rate]
                for q, style in zip(quantiles, ("-o", "--s"), strict=False):
                    xy = [
                        (p["num_adapters"], v)
                        for p in members
                        if p["num_adapters"] > 0 and (v := _value(p, field, q, scale)) is not None
                    ]
                    label = f"rate {rate}" + (f" {q}" if len(quantiles) > 1 else "")
                    if xy:
                        ax.plot(*zip(*xy, strict=True), style, color=color, label=label)
                    for p in members:
                        v = _value(p, field, q, scale)
                        if p["num_adapters"] == 0 and v is not None:
                            ax.axhline(
                                v, color=color, linestyle=":", alpha=0.7, label=f"{label} base"
                            )
            ax.set_xscale("log")
            ax.set_xlabel("adapters")
        else:
            series_n = sorted({p["num_adapters"] for p in points})
            for i, n in enumerate(series_n):
                color = f"C{i % 10}"
                members = [p for p in points if p["num_adapters"] == n]
                who = "base" if n == 0 else f"{n} adapters"
                for q, style in zip(quantiles, ("-o", "--s"), strict=False):
                    label = who + (f" {q}" if len(quantiles) > 1 else "")
                    xy = sorted(
                        (p["rate_rps"], v)
                        for p in members
                        if p["rate_rps"] is not None
                        and (v := _value(p, field, q, scale)) is not None
                    )
                    if xy:
                        ax.plot(*zip(*xy, strict=True), style, color=color, label=label)
                    for p in members:
                        v = _value(p, field, q, scale)
                        if p["rate"] == "inf" and v is not None:
                            ax.axhline(
                                v,
                                color=color,
                                linestyle=":",
                                alpha=0.7,
                                label=f"{label} saturation",
                            )
            ax.set_xlabel("offered rate (requests/s)")
        ax.set_title(panel)
        ax.set_ylabel(unit)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title)  # pyright: ignore[reportUnknownMemberType]
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)  # pyright: ignore[reportUnknownMemberType]
    plt.close(fig)
