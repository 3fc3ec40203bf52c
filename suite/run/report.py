"""Accuracy-latency Pareto reports over the results store, and run-to-run comparison.

A latency number means something only under the hardware profile it was measured with, so every
table and plot here covers exactly one profile hash; a report over several profiles writes one set
of tables and plots per profile.
"""

import html
import re
from functools import partial
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from suite.errors import DepthbenchError
from suite.run.store import read_consolidated

BASELINE_METHOD = "original"
_NETWORK = ["profile_hash", "model", "dataset"]  # points on one front share these
_CELL = [
    "model", "dataset", "method", "method_config", "budget_kind", "budget_value", "profile_hash",
    "seed",
]  # fmt: skip
_TABLE_COLUMNS = [
    "model", "dataset", "method", "budget_kind", "budget_value", "seed", "fidelity", "top1",
    "top5", "latency_ms_median", "latency_ms_ci_low", "latency_ms_ci_high", "stable", "speedup",
    "accuracy_drop_pp", "method_front", "global_front",
]  # fmt: skip
_UNMEASURED_COLUMNS = [
    "model", "dataset", "method", "budget_kind", "budget_value", "seed", "status", "reason",
]  # fmt: skip


def pareto_front(records: pd.DataFrame) -> pd.DataFrame:
    """``records`` with two added columns: ``method_front`` and ``global_front``.

    A measured cell is on a front when no other cell of the same network (model, data set) and
    profile has at least its top-1 accuracy and at most its median latency, and is strictly better
    in one of them; ``method_front`` compares with cells of the same method only. Cells that are
    not measured (infeasible, failed) are on no front.
    """
    frame = records.reset_index(drop=True)
    frame["method_front"] = False
    frame["global_front"] = False
    measured = frame[
        (frame["status"] == "ok") & frame["top1"].notna() & frame["latency_ms_median"].notna()
    ]
    for _, network in measured.groupby(_NETWORK):
        frame.loc[network.index, "global_front"] = _non_dominated(network)
        for _, method in network.groupby("method"):
            frame.loc[method.index, "method_front"] = _non_dominated(method)
    return frame


def results_table(records: pd.DataFrame) -> pd.DataFrame:
    """The measured cells of ONE profile: accuracy, latency with its CI, speed-up and accuracy
    drop against the ``original`` network of the same model and data set, and front membership.

    Records of several profile hashes are refused: their latencies are not comparable.
    """
    profiles = records["profile_hash"].unique()
    if len(profiles) > 1:
        raise DepthbenchError(
            f"records of {len(profiles)} hardware profiles ({', '.join(map(str, profiles))}) "
            "cannot share one table: latencies measured under different profiles are not "
            "comparable. Select one profile_hash, or let write_report make one table per profile"
        )
    frame = pareto_front(records)
    frame = frame[frame["status"] == "ok"]
    baseline = (
        frame[frame["method"] == BASELINE_METHOD]
        .groupby(_NETWORK)[["latency_ms_median", "top1"]]
        .mean()
        .rename(columns={"latency_ms_median": "baseline_ms", "top1": "baseline_top1"})
    )
    frame = frame.join(baseline, on=_NETWORK)
    frame["speedup"] = frame["baseline_ms"] / frame["latency_ms_median"]
    frame["accuracy_drop_pp"] = frame["baseline_top1"] - frame["top1"]
    ordered = frame.sort_values(["model", "dataset", "method", "latency_ms_median"])
    return ordered[_TABLE_COLUMNS].reset_index(drop=True)


def unmeasured_table(records: pd.DataFrame) -> pd.DataFrame:
    """Cells without measurements (infeasible or failed) and why: listed, never plotted."""
    unmeasured = records.loc[records["status"] != "ok", _UNMEASURED_COLUMNS]
    return unmeasured.sort_values(_UNMEASURED_COLUMNS).reset_index(drop=True)


def write_report(source: Path | pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write tables (Markdown, CSV, LaTeX, HTML) and plots (PNG, SVG) per profile.

    ``source`` is a consolidated run directory (its ``records.parquet`` is all that is read) or a
    records table. Returns the written files; each profile gets ``out_dir/<profile>-<hash>/``.
    """
    records = source if isinstance(source, pd.DataFrame) else read_consolidated(source)
    if records.empty:
        raise DepthbenchError("there are no records to report on: has the run finished a cell?")
    written = []
    for profile_hash, profile_records in records.groupby("profile_hash"):
        profile_name = profile_records["profile_name"].iloc[0]
        folder = Path(out_dir) / f"{_path_safe(profile_name)}-{profile_hash[:12]}"
        folder.mkdir(parents=True, exist_ok=True)
        title = f"{profile_name} (profile {profile_hash})"
        table = results_table(profile_records)
        written += _write_tables(table, folder / "results", title)
        unmeasured = unmeasured_table(profile_records)
        if not unmeasured.empty:
            written += _write_tables(unmeasured, folder / "unmeasured", title)
        short_title = f"{profile_name} (profile {profile_hash[:12]})"
        if not table.empty:
            written += _plot_accuracy_vs_latency(table, folder / "accuracy_vs_latency", short_title)
        if table["speedup"].notna().any():
            written += _plot_speedup_vs_drop(table, folder / "speedup_vs_drop", short_title)
    return written


def compare_runs(run_a: pd.DataFrame, run_b: pd.DataFrame) -> pd.DataFrame:
    """Cell-by-cell differences of two runs, matched on model, data set, method (and config),
    budget, profile hash and seed.

    A cell is ``flagged`` when it is in one run only, its status changed, its accuracy differs,
    or its latency moved beyond the measured noise: the two confidence intervals of the median do
    not overlap (a cell without a CI counts its median as a zero-width interval).
    """
    for label, run in (("A", run_a), ("B", run_b)):
        duplicated = run.duplicated(_CELL)
        if duplicated.any():
            raise DepthbenchError(
                f"run {label} has {duplicated.sum()} cells with the same model, data set, method, "
                "budget, profile and seed; compare runs with one record per cell"
            )
    values = [
        "status", "top1", "top5", "latency_ms_median", "latency_ms_ci_low", "latency_ms_ci_high",
    ]  # fmt: skip
    merged = run_a[_CELL + values].merge(
        run_b[_CELL + values], on=_CELL, how="outer", suffixes=("_a", "_b"), indicator="present"
    )
    merged["present"] = merged["present"].map(
        {"both": "both", "left_only": "A only", "right_only": "B only"}
    )
    merged["top1_diff_pp"] = merged["top1_b"] - merged["top1_a"]
    merged["latency_diff_ms"] = merged["latency_ms_median_b"] - merged["latency_ms_median_a"]
    low_a, high_a = _interval(merged, "a")
    low_b, high_b = _interval(merged, "b")
    merged["latency_changed"] = (low_b > high_a) | (high_b < low_a)
    merged["accuracy_changed"] = _differs(merged, "top1") | _differs(merged, "top5")
    status_changed = (merged["status_a"] != merged["status_b"]).fillna(True).astype(bool)
    merged["flagged"] = (
        merged["latency_changed"]
        | merged["accuracy_changed"]
        | status_changed
        | (merged["present"] != "both")
    )
    return merged


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as text for people: 2 decimals (3 for milliseconds), latency as
    'median [CI low, high]', marks for front membership. (CSV keeps full precision instead.)"""
    shown = table.copy()
    if "latency_ms_median" in shown:
        shown["latency_ms_median"] = [
            _latency_text(median, low, high)
            for median, low, high in zip(
                shown["latency_ms_median"],
                shown["latency_ms_ci_low"],
                shown["latency_ms_ci_high"],
                strict=True,
            )
        ]
        shown = shown.drop(columns=["latency_ms_ci_low", "latency_ms_ci_high"])
    for column in shown.columns:
        if column.endswith("_front"):
            shown[column] = shown[column].map({True: "*", False: ""})
        elif pd.api.types.is_float_dtype(shown[column]):
            shown[column] = shown[column].map(partial(_number_text, digits=_digits(column)))
    shown = shown.astype(object).where(shown.notna(), "")
    return shown.rename(columns=_HEADERS)


_HEADERS = {
    "budget_kind": "budget kind",
    "budget_value": "budget",
    "top1": "top-1 %",
    "top5": "top-5 %",
    "latency_ms_median": "latency ms [CI]",
    "speedup": "speed-up",
    "accuracy_drop_pp": "drop pp",
    "method_front": "method front",
    "global_front": "global front",
    "top1_a": "top-1 % A",
    "top1_b": "top-1 % B",
    "latency_ms_median_a": "ms A",
    "latency_ms_median_b": "ms B",
    "latency_diff_ms": "ms B-A",
    "status_a": "status A",
    "status_b": "status B",
}


def _non_dominated(points: pd.DataFrame) -> np.ndarray:
    accuracy = points["top1"].to_numpy(dtype=float)
    latency = points["latency_ms_median"].to_numpy(dtype=float)
    # [i, j]: point j is at least as good as point i in both, and strictly better in one
    as_good = (accuracy[None, :] >= accuracy[:, None]) & (latency[None, :] <= latency[:, None])
    better = (accuracy[None, :] > accuracy[:, None]) | (latency[None, :] < latency[:, None])
    return ~(as_good & better).any(axis=1)


def _interval(merged: pd.DataFrame, run: str) -> tuple[pd.Series, pd.Series]:
    median = merged[f"latency_ms_median_{run}"]
    return (
        merged[f"latency_ms_ci_low_{run}"].fillna(median),
        merged[f"latency_ms_ci_high_{run}"].fillna(median),
    )


def _differs(merged: pd.DataFrame, column: str) -> pd.Series:
    a, b = merged[f"{column}_a"], merged[f"{column}_b"]
    return (a.isna() != b.isna()) | ((a - b).abs() > 1e-9)


def _digits(column: str) -> int:
    return 3 if "_ms" in column else 2


def _number_text(value: float, digits: int) -> str:
    return "" if pd.isna(value) else f"{value:.{digits}f}"


def _latency_text(median: float, low: float, high: float) -> str:
    if pd.isna(median):
        return ""
    if pd.isna(low) or pd.isna(high):
        return f"{median:.3f}"
    return f"{median:.3f} [{low:.3f}, {high:.3f}]"


def _write_tables(table: pd.DataFrame, stem: Path, title: str) -> list[Path]:
    shown = display_table(table)
    paths = [stem.with_suffix(suffix) for suffix in (".csv", ".md", ".tex", ".html")]
    table.to_csv(paths[0], index=False)
    paths[1].write_text(f"# {title}\n\n{shown.to_markdown(index=False)}\n")
    paths[2].write_text(shown.to_latex(index=False, escape=True, caption=title))
    paths[3].write_text(f"<h1>{html.escape(title)}</h1>\n{shown.to_html(index=False)}\n")
    return paths


def _plot_accuracy_vs_latency(table: pd.DataFrame, stem: Path, title: str) -> list[Path]:
    """Every measured cell, each method's front as a staircase, the global front dashed."""
    data = table.assign(network=table["model"] + " on " + table["dataset"])
    methods = sorted(data["method"].unique())
    palette = dict(zip(methods, sns.color_palette(n_colors=len(methods)), strict=True))
    grid = sns.relplot(
        data=data,
        x="latency_ms_median",
        y="top1",
        hue="method",
        style="method",
        palette=palette,
        col="network",
        kind="scatter",
        facet_kws={"sharex": False, "sharey": False},
    )
    grid.map_dataframe(partial(_draw_intervals_and_fronts, palette=palette))
    grid.set_titles("{col_name}")
    grid.set_axis_labels(
        "median latency (ms), bars: its CI\nlines: per-method fronts, dashed: global front",
        "top-1 accuracy (%)",
    )
    return _save(grid, stem, title)


def _draw_intervals_and_fronts(data: pd.DataFrame, palette: dict[str, tuple], **_: object) -> None:
    axes = plt.gca()
    axes.errorbar(
        data["latency_ms_median"],
        data["top1"],
        xerr=[
            (data["latency_ms_median"] - data["latency_ms_ci_low"]).fillna(0),
            (data["latency_ms_ci_high"] - data["latency_ms_median"]).fillna(0),
        ],
        fmt="none",
        ecolor="grey",
        alpha=0.5,
    )
    for method, front in data[data["method_front"]].groupby("method"):
        front = front.sort_values("latency_ms_median")
        axes.step(front["latency_ms_median"], front["top1"], where="post", color=palette[method])
    front = data[data["global_front"]].sort_values("latency_ms_median")
    axes.step(
        front["latency_ms_median"], front["top1"], where="post", color="black", linestyle="--"
    )


def _plot_speedup_vs_drop(table: pd.DataFrame, stem: Path, title: str) -> list[Path]:
    data = table[table["speedup"].notna()].assign(
        network=table["model"] + " on " + table["dataset"]
    )
    grid = sns.relplot(
        data=data,
        x="speedup",
        y="accuracy_drop_pp",
        hue="method",
        style="method",
        col="network",
        kind="scatter",
        facet_kws={"sharex": False, "sharey": False},
    )
    grid.set_titles("{col_name}")
    grid.set_axis_labels(f"speed-up vs {BASELINE_METHOD} (x)", "top-1 drop (pp)")
    return _save(grid, stem, title)


def _save(grid: sns.FacetGrid, stem: Path, title: str) -> list[Path]:
    grid.figure.suptitle(title, y=1.04)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        grid.figure.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(grid.figure)
    return paths


def _path_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "profile"
