"""The PNG plot of a sweep: throughput, TTFT and TPOT against adapter count or against rate.

Against adapters (log x axis) there is one colour per rate, and the base model (adapter count
0) is a dotted horizontal line of that colour: the ceiling. Against rate (the offered requests/s)
there is one colour per adapter count, and a saturation point (rate ``inf``) is a dotted
horizontal line. p50 is solid, p99 dashed. ``auto`` picks adapters when the sweep has more adapter
counts than fixed rates. matplotlib is imported here only (the ``bench`` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

__all__ = ["PlotAxis", "choose_axis", "plot_points"]

PlotAxis = Literal["auto", "adapters", "rate"]

# (title, summary section, key pattern, scale to display units, unit)
_PANELS: tuple[tuple[str, str, str, float, str], ...] = (
    ("Throughput", "throughput", "output_tokens_per_s", 1.0, "output tokens/s"),
    ("TTFT", "ttft_s", "{q}", 1.0, "s"),
    ("TPOT", "tpot_s", "{q}", 1000.0, "ms"),
)
_STYLES = {"p50": "-", "p99": "--"}


def choose_axis(
    points: list[dict[str, Any]], axis: PlotAxis = "auto"
) -> Literal["adapters", "rate"]:
    """The x axis ``auto`` stands for: adapters when there are more adapter counts (base
    excluded) than fixed rates (inf, trace and fractions of saturation do not count)."""
    if axis != "auto":
        return axis
    counts = {p["num_adapters"] for p in points if p["num_adapters"] > 0}
    fixed = {
        p["rate"]
        for p in points
        if p["rate"] not in ("inf", "trace") and not p["rate"].endswith("x")
    }
    return "adapters" if len(counts) > 1 and len(counts) >= len(fixed) else "rate"


def _value(point: dict[str, Any], panel: tuple[str, str, str, float, str], q: str) -> float | None:
    _, section, key, scale, _ = panel
    value = point["summary"][section][key.format(q=q)]
    return None if value is None else float(value) * scale


def plot_points(
    points: list[dict[str, Any]], path: Path, title: str = "lorax-bench", axis: PlotAxis = "auto"
) -> None:
    """Draw the sweep's points (the results file's ``points``) into a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    x_axis = choose_axis(points, axis)
    if x_axis == "adapters":
        # Series: one per rate label, in the order the sweep ran them.
        keys = list(dict.fromkeys(p["rate"] for p in points))
        series = {k: [p for p in points if p["rate"] == k] for k in keys}
        names = {k: f"rate {k}" for k in keys}
    else:
        keys = sorted({p["num_adapters"] for p in points})
        series = {k: [p for p in points if p["num_adapters"] == k] for k in keys}
        names = {k: "base" if k == 0 else f"{k} adapter{'s' if k > 1 else ''}" for k in keys}

    def x_of(p: dict[str, Any]) -> float | None:
        if x_axis == "adapters":
            return p["num_adapters"] if p["num_adapters"] > 0 else None
        return p["rate_rps"]

    def is_reference(p: dict[str, Any]) -> bool:
        # Drawn as a horizontal line: the base model, or a saturation point.
        return p["num_adapters"] == 0 if x_axis == "adapters" else p["rate"] == "inf"

    fig, axes = plt.subplots(1, len(_PANELS), figsize=(6 * len(_PANELS), 4.5), squeeze=False)
    for ax, panel in zip(axes[0], _PANELS, strict=True):
        quantiles = ("p50",) if panel[0] == "Throughput" else ("p50", "p99")
        for i, key in enumerate(keys):
            color = f"C{i % 10}"
            for q in quantiles:
                xy = sorted(
                    (x, v)
                    for p in series[key]
                    if (x := x_of(p)) is not None and (v := _value(p, panel, q)) is not None
                )
                if xy:
                    xs, ys = zip(*xy, strict=True)
                    ax.plot(xs, ys, _STYLES[q], marker="o", color=color)
                for p in series[key]:
                    v = _value(p, panel, q)
                    if is_reference(p) and v is not None:
                        ax.axhline(v, color=color, linestyle=":", alpha=0.8)
        if x_axis == "adapters":
            ax.set_xscale("log")
            ticks = sorted({p["num_adapters"] for p in points if p["num_adapters"] > 0})
            ax.set_xticks(ticks)
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("adapters")
        else:
            ax.set_xlabel("offered rate (requests/s)")
        ax.set_title(panel[0])
        ax.set_ylabel(panel[4])
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], color=f"C{i % 10}", label=names[k]) for i, k in enumerate(keys)]
    handles.append(Line2D([], [], color="gray", linestyle="-", label="p50"))
    handles.append(Line2D([], [], color="gray", linestyle="--", label="p99"))
    reference = "base model" if x_axis == "adapters" else "saturation (rate inf)"
    handles.append(Line2D([], [], color="gray", linestyle=":", label=reference))
    fig.legend(  # pyright: ignore[reportUnknownMemberType]
        handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=9
    )
    fig.suptitle(title)  # pyright: ignore[reportUnknownMemberType]
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)  # pyright: ignore[reportUnknownMemberType]
    plt.close(fig)
