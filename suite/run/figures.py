"""The figures of a report, drawn from a results table of one profile
(``suite.run.report.results_table``).

``accuracy_figure`` plots top-1 against median latency, speed-up over the original network or
MACs; ``speedup_drop_figure`` plots the top-1 drop against the speed-up. Either has one panel per
network (model and data set) and draws, back to front:

- each budget's latency target as a light vertical line labelled with the budget (``target_ms``
  where the records hold it, else the budget times the original's latency, or the budget itself
  for millisecond budgets; table-unit budgets have no latency to draw);
- the original network as reference lines: its top-1 (or zero drop) horizontally, its latency,
  speed-up 1 or MACs vertically;
- the global front as a thin grey staircase, so that no method's own front hides behind it;
- each method's 95% interval bars, its front as a staircase in its colour, and its points.

A staircase runs only through the front's points that their intervals tell apart from every
other point of that front (``distinguishable``): a step between two points whose intervals
overlap in top-1 and in latency would order what the data cannot. Such points keep their marker
and their bars, and the tables still mark them as on the front.

Fronts are fronts in latency; against MACs they are not staircases (a merged network can have
more MACs and still be faster), so that axis shows the points only. The legend sits outside the
axes. ``save_figure`` writes PNG, SVG with text kept as ``<text>`` elements, and PDF with
TrueType fonts, so that the text of the vector files stays editable.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from suite.errors import DepthbenchError

XAxis = Literal["latency", "speedup", "macs"]
X_AXES: tuple[XAxis, ...] = ("latency", "speedup", "macs")
BASELINE_METHOD = "original"
_X_LABELS = {
    "latency": "median latency (ms)",
    "speedup": f"speed-up over {BASELINE_METHOD} (×)",
    "macs": "MACs (millions)",
}
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]
_REFERENCE = {"color": "0.25", "linestyle": ":", "linewidth": 0.9, "zorder": 1}
_GLOBAL_FRONT = {"color": "0.6", "linewidth": 0.9, "zorder": 1.5}
_BUDGET = {"color": "0.8", "linewidth": 0.8, "linestyle": "--", "zorder": 0}
_SAVE_RC = {"pdf.fonttype": 42, "svg.fonttype": "none"}  # text as text, not as paths


def accuracy_figure(
    table: pd.DataFrame, x: XAxis = "latency", log_x: bool = False, title: str = ""
) -> Figure:
    """Top-1 against ``x`` (latency, speed-up or MACs), one panel per network."""
    if x not in X_AXES:
        raise DepthbenchError(f"unknown x axis {x!r}: choose one of {', '.join(X_AXES)}")
    _check_x(table, x)
    return _figure(table, x=x, y="top1", log_x=log_x, title=title)


def speedup_drop_figure(table: pd.DataFrame, title: str = "") -> Figure:
    """Top-1 drop (points) against speed-up over the original, one panel per network."""
    return _figure(table[table["speedup"].notna()], x="speedup", y="drop", log_x=False, title=title)


def save_figure(figure: Figure, stem: Path) -> list[Path]:
    """Write ``stem``.png, .svg and .pdf (editable text in the vector files) and close it."""
    paths = [stem.with_suffix(suffix) for suffix in (".png", ".svg", ".pdf")]
    with plt.rc_context(_SAVE_RC):
        for path in paths:
            figure.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(figure)
    return paths


def _check_x(table: pd.DataFrame, x: XAxis) -> None:
    if x == "speedup" and table["speedup"].isna().all():
        raise DepthbenchError(
            f"--x speedup needs the {BASELINE_METHOD!r} network measured under this profile, and "
            f"these records have no {BASELINE_METHOD!r} cell: plot --x latency, or run the "
            f"experiment with the {BASELINE_METHOD!r} method"
        )
    if x == "macs" and ("macs" not in table or table["macs"].isna().all()):
        raise DepthbenchError(
            "--x macs needs the MACs of the deployed networks, and these records have none: "
            "plot --x latency or --x speedup"
        )


def _figure(table: pd.DataFrame, x: XAxis, y: str, log_x: bool, title: str) -> Figure:
    networks = list(table.groupby(["model", "dataset"], sort=True))
    methods = sorted(set(table["method"]) - {BASELINE_METHOD})
    colours = dict(zip(methods, sns.color_palette("colorblind", len(methods)), strict=True))
    markers = {m: _MARKERS[i % len(_MARKERS)] for i, m in enumerate(methods)}
    with sns.axes_style("ticks"):
        figure, axes = plt.subplots(
            1, max(len(networks), 1), figsize=(6.0 * max(len(networks), 1), 4.4), squeeze=False
        )
    for ax, ((model, dataset), data) in zip(axes[0], networks, strict=False):
        _draw_network(ax, data, x, y, colours, markers)
        ax.set_title(f"{model} on {dataset}", pad=14)  # room for the budget labels
        ax.set_xlabel(_X_LABELS[x])
        ax.set_ylabel("top-1 accuracy (%)" if y == "top1" else "top-1 drop (points)")
        if log_x:
            ax.set_xscale("log")
    axes[0][-1].legend(
        handles=_legend_handles(table, x, colours, markers),
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        frameon=False,
    )
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def _draw_network(
    ax: Axes,
    data: pd.DataFrame,
    x: XAxis,
    y: str,
    colours: dict[str, tuple],
    markers: dict[str, str],
) -> None:
    data = data.assign(_x=_x_values(data, x), _y=_y_values(data, y))
    xerr, yerr = _x_errors(data, x), _y_errors(data, y)
    data = data.assign(_xlo=xerr[0], _xhi=xerr[1], _ylo=yerr[0], _yhi=yerr[1]).dropna(
        subset=["_x", "_y"]
    )
    original = data[data["method"] == BASELINE_METHOD]
    if x in ("latency", "speedup"):
        _draw_budgets(ax, data, x)
    if not original.empty:
        ax.axhline(original["_y"].mean(), **_REFERENCE)
        ax.axvline(original["_x"].mean(), **_REFERENCE)
        ax.scatter(original["_x"], original["_y"], marker="*", s=140, color="black", zorder=4,
                   label=BASELINE_METHOD)  # fmt: skip
    if x != "macs":
        _step(ax, _told_apart(data[data["global_front"]]), x, **_GLOBAL_FRONT)
    for method, points in data[data["method"] != BASELINE_METHOD].groupby("method", sort=True):
        colour = colours[method]
        ax.errorbar(points["_x"], points["_y"], xerr=[points["_xlo"], points["_xhi"]],
                    yerr=[points["_ylo"], points["_yhi"]], fmt="none", ecolor=colour, alpha=0.45,
                    linewidth=1.0, zorder=2)  # fmt: skip
        if x != "macs":
            front = _told_apart(points[points["method_front"]])
            _step(ax, front, x, color=colour, linewidth=1.5, zorder=2.5)
        ax.scatter(points["_x"], points["_y"], marker=markers[method], color=colour, s=40,
                   edgecolors="white", linewidths=0.5, zorder=3, label=method)  # fmt: skip


def distinguishable(front: pd.DataFrame) -> pd.Series:
    """For each point of a front, whether its 95% intervals tell it apart from every other point
    of the front: for each other point, their top-1 intervals or their latency intervals do not
    overlap (a point without an interval is its value)."""
    columns = ["top1", "top1_ci_low", "top1_ci_high", "latency_ms_median", "latency_ms_ci_low",
               "latency_ms_ci_high"]  # fmt: skip
    values = front[columns].astype(float)
    low_a = values["top1_ci_low"].fillna(values["top1"]).to_numpy()
    high_a = values["top1_ci_high"].fillna(values["top1"]).to_numpy()
    low_l = values["latency_ms_ci_low"].fillna(values["latency_ms_median"]).to_numpy()
    high_l = values["latency_ms_ci_high"].fillna(values["latency_ms_median"]).to_numpy()
    # [i, j]: the intervals of points i and j overlap on that axis
    overlap_a = (low_a[:, None] <= high_a[None, :]) & (low_a[None, :] <= high_a[:, None])
    overlap_l = (low_l[:, None] <= high_l[None, :]) & (low_l[None, :] <= high_l[:, None])
    confused = overlap_a & overlap_l
    np.fill_diagonal(confused, False)
    return pd.Series(~confused.any(axis=1), index=front.index)


def _told_apart(front: pd.DataFrame) -> pd.DataFrame:
    return front[distinguishable(front)] if not front.empty else front


def _x_values(data: pd.DataFrame, x: XAxis) -> pd.Series:
    if x == "latency":
        return data["latency_ms_median"]
    if x == "speedup":
        return data["speedup"]
    return data["macs"].astype(float) / 1e6


def _y_values(data: pd.DataFrame, y: str) -> pd.Series:
    return data["top1"] if y == "top1" else data["accuracy_drop_pp"]


def _x_errors(data: pd.DataFrame, x: XAxis) -> tuple[pd.Series, pd.Series]:
    """Distances from each point to the ends of its 95% interval (zero where it has none)."""
    median, low, high = (data[c] for c in ("latency_ms_median", "latency_ms_ci_low",
                                           "latency_ms_ci_high"))  # fmt: skip
    if x == "latency":
        return (median - low).fillna(0), (high - median).fillna(0)
    if x == "speedup":  # base / latency: the slow end of the latency gives the low speed-up
        base = data["speedup"] * median
        return (data["speedup"] - base / high).fillna(0), (base / low - data["speedup"]).fillna(0)
    zero = pd.Series(0.0, index=data.index)
    return zero, zero


def _y_errors(data: pd.DataFrame, y: str) -> tuple[pd.Series, pd.Series]:
    below = (data["top1"] - data["top1_ci_low"]).fillna(0)
    above = (data["top1_ci_high"] - data["top1"]).fillna(0)
    return (below, above) if y == "top1" else (above, below)  # drop = base - top1


def _step(ax: Axes, front: pd.DataFrame, x: XAxis, **style: object) -> None:
    """The front as the best value reachable at each x: lower latency is better, higher speed-up
    is better, so the staircase holds each point's value towards the worse side."""
    front = front.sort_values("_x")
    ax.step(front["_x"], front["_y"], where="post" if x == "latency" else "pre", **style)


def _draw_budgets(ax: Axes, data: pd.DataFrame, x: XAxis) -> None:
    """A light vertical line at each budget's latency target, labelled at the top."""
    original = data.loc[data["method"] == BASELINE_METHOD, "latency_ms_median"]
    base_ms = original.mean() if not original.empty else np.nan
    compressed = data[data["method"] != BASELINE_METHOD]
    for (kind, value), cells in compressed.groupby(["budget_kind", "budget_value"], sort=True):
        target_ms = _target_ms(cells, kind, value, base_ms)
        position = target_ms if x == "latency" else base_ms / target_ms
        if not np.isfinite(position):
            continue
        ax.axvline(position, **_BUDGET)
        label = f"{value:g}×" if kind == "fraction" else f"{value:g} ms"
        ax.text(position, 1.005, label, transform=ax.get_xaxis_transform(), ha="center",
                va="bottom", fontsize=7, color="0.45", zorder=0)  # fmt: skip


def _target_ms(cells: pd.DataFrame, kind: str, value: float, base_ms: float) -> float:
    if "target_ms" in cells and cells["target_ms"].notna().any():
        return float(cells["target_ms"].mean())
    if kind == "fraction":
        return value * base_ms
    return value if kind == "ms" else np.nan


def _legend_handles(
    table: pd.DataFrame, x: XAxis, colours: dict[str, tuple], markers: dict[str, str]
) -> Sequence[Line2D]:
    front_line = 1.5 if x != "macs" else 0
    handles = [
        Line2D([], [], color=colours[m], marker=markers[m], linewidth=front_line, label=m)
        for m in colours
    ]
    if x != "macs":
        handles.append(Line2D([], [], **_GLOBAL_FRONT, label="global front"))
    if (table["method"] == BASELINE_METHOD).any():
        handles.append(
            Line2D(
                [],
                [],
                color="black",
                marker="*",
                markersize=10,
                linestyle=":",
                linewidth=0.9,
                label=f"{BASELINE_METHOD} (reference lines)",
            )  # fmt: skip
        )
    if x != "macs":
        handles.append(Line2D([], [], **_BUDGET, label="budget latency targets"))
    handles.append(Line2D([], [], color="0.5", marker="|", linewidth=1.0, label="95% intervals"))
    return handles
