"""Accuracy-latency Pareto reports over the results store, and run-to-run comparison.

A latency number means something only under the hardware profile it was measured with, so every
table and plot here covers exactly one profile hash; a report over several profiles writes one set
of tables and plots per profile.

Every number carries its 95% interval (formulas in ``suite.run.stats``). A table row is one cell
aggregated over its seeds (``aggregate_seeds``); fronts are computed on those aggregates. Methods
at the same budget are compared pairwise on the same test images (``pairwise_table``).

Written for a paper: CSV keeps every column at full precision; Markdown and LaTeX (booktabs, with
a caption and a label, global-front rows in bold) move the columns that hold one value in
every row (model, data set, fidelity, seeds) into the caption, which names the profile but not its
hash. One self-contained HTML page per profile holds the tables and the figures
(``suite.run.figures``, embedded as SVG), its results and unmeasured cells linked both ways; an
index page links the profiles' pages when there are several.
"""

import base64
import itertools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

from suite.errors import DepthbenchError
from suite.run.figures import (
    BASELINE_METHOD,
    XAxis,
    accuracy_figure,
    save_figure,
    speedup_drop_figure,
)
from suite.run.stats import (
    CONFIDENCE,
    geometric_t_interval,
    mcnemar_exact,
    paired_bootstrap_difference,
    t_interval,
    unpack_correct,
    wilson_interval,
)
from suite.run.store import read_consolidated

_NETWORK = ["profile_hash", "model", "dataset"]  # points on one front share these
_CELL = [
    "model", "dataset", "method", "method_config", "budget_kind", "budget_value", "profile_hash",
    "seed",
]  # fmt: skip
_SEEDLESS = [
    "model", "dataset", "method", "method_config", "budget_kind", "budget_value", "profile_hash",
    "profile_name", "fidelity",
]  # fmt: skip  # a cell without its seed: the seeds of one such group are aggregated
_TABLE_COLUMNS = [
    "model", "dataset", "method", "budget_kind", "budget_value", "target_ms", "budget_met", "seeds",
    "seed", "fidelity", "top1", "top1_ci_low", "top1_ci_high", "top5", "latency_ms_median",
    "latency_ms_ci_low", "latency_ms_ci_high", "latency_source", "stable", "speedup",
    "accuracy_drop_pp", "params", "macs", "depth", "method_front", "global_front",
]  # fmt: skip
# What each method spent on its search (mean over seeds); stored runs older than it show nothing.
_SEARCH_COST = ["search_wall_s", "search_steps", "finetune_steps", "latency_measurements"]
_PAIRWISE_COLUMNS = [
    "model", "dataset", "budget_kind", "budget_value", "method_a", "method_b", "seeds", "top1_a",
    "top1_b", "top1_diff_pp", "diff_ci_low", "diff_ci_high", "only_a", "only_b", "mcnemar_p",
    "significant", "better",
]  # fmt: skip
# Columns newer than some stored runs: added empty when a run's Parquet lacks them.
_OPTIONAL_COLUMNS = {
    "test_images": "Int64", "test_correct": "string", "latency_source": "string",
    "target_ms": "Float64",
    "budget_met": "boolean", "params": "Int64", "macs": "Int64", "depth": "Int64",
}  # fmt: skip
# Columns that describe the whole table when they hold one value: moved into its caption.
_CONTEXT_COLUMNS = [
    "model", "dataset", "budget_kind", "fidelity", "seeds", "seed", "stable", "status",
]  # fmt: skip
_ADDITIVITY_KEY = ["model", "dataset", "table_method", "segment_sum_ms"]
_ADDITIVITY_COLUMNS = [
    *_ADDITIVITY_KEY, "outside_ms", "base_latency_ms", "relative_error", "relative_error_min",
    "relative_error_max", "base_screenings",
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


def aggregate_seeds(records: pd.DataFrame) -> pd.DataFrame:
    """One row per measured cell without its seed: its seeds' accuracy and latency with 95%
    intervals (``seeds`` counts them, ``seed`` lists them).

    One seed: the cell's own numbers; top-1's interval is the Wilson interval over its test
    images (empty for records without ``test_images``), latency's is the record's. Several
    seeds: top-1 is their mean, latency the geometric mean of their medians, each with a
    Student-t interval over seeds (on logarithms for latency). The seeds share one test set and
    each latency has its own session noise, which the spread over seeds does not show (two seeds
    with equal top-1 give a zero-width t-interval), so the interval is the hull of the
    t-interval and the one-seed intervals: the Wilson interval of the mean top-1, the seeds'
    latency intervals. ``stable`` and ``budget_met`` only if every seed's was; top-5, the latency
    target, params, MACs and depth are the seeds' means (one value where the seeds agree).
    ``latency_source`` says where the latencies come from: ``session`` (the run's interleaved
    measurement of the profile, ``suite.run.session``) or ``cell`` (measured as the cell finished).
    """
    measured = _with_optional_columns(records)
    measured = measured[measured["status"] == "ok"]
    rows = [
        {**dict(zip(_SEEDLESS, key, strict=True)), **_aggregate(group)}
        for key, group in measured.groupby(_SEEDLESS, dropna=False, sort=True)
    ]
    columns = _SEEDLESS + [
        "status", "seeds", "seed", "top1", "top1_ci_low", "top1_ci_high", "top5",
        "latency_ms_median", "latency_ms_ci_low", "latency_ms_ci_high", "latency_source", "stable",
        "target_ms", "budget_met", "params", "macs", "depth",
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns).astype({"budget_met": "boolean"})


def results_table(records: pd.DataFrame) -> pd.DataFrame:
    """The measured cells of ONE profile, aggregated over seeds (``aggregate_seeds``): top-1 and
    latency with their 95% intervals, speed-up and accuracy drop against the ``original``
    network of the same model and data set, the deployed network's params, MACs and depth,
    front membership of the aggregates, and the search cost (``_SEARCH_COST``, the seeds' mean).
    ``target_ms`` and ``budget_met`` are there when the records hold them; a column empty in every
    row is left out.

    Records of several profile hashes are refused: their latencies are not comparable.
    """
    profiles = records["profile_hash"].unique()
    if len(profiles) > 1:
        raise DepthbenchError(
            f"records of {len(profiles)} hardware profiles ({', '.join(map(str, profiles))}) "
            "cannot share one table: latencies measured under different profiles are not "
            "comparable. Select one profile_hash, or let write_report make one table per profile"
        )
    frame = pareto_front(aggregate_seeds(records))
    baseline = (
        frame[frame["method"] == BASELINE_METHOD]
        .groupby(_NETWORK)[["latency_ms_median", "top1"]]
        .mean()
        .rename(columns={"latency_ms_median": "baseline_ms", "top1": "baseline_top1"})
    )
    frame = frame.join(baseline, on=_NETWORK).merge(search_cost(records), on=_SEEDLESS, how="left")
    frame["speedup"] = frame["baseline_ms"] / frame["latency_ms_median"]
    frame["accuracy_drop_pp"] = frame["baseline_top1"] - frame["top1"]
    ordered = frame.sort_values(["model", "dataset", "method", "latency_ms_median"])
    columns = _TABLE_COLUMNS + _SEARCH_COST
    # what the records do not hold (a budget check, a network size) is left out, not shown empty
    empty = [
        c for c in [*_OPTIONAL_COLUMNS, *_SEARCH_COST] if c in columns and ordered[c].isna().all()
    ]
    return ordered[columns].drop(columns=empty).reset_index(drop=True)


def search_cost(records: pd.DataFrame) -> pd.DataFrame:
    """The search cost of each measured cell, averaged over its seeds (empty where not stored)."""
    measured = records[records["status"] == "ok"].reindex(columns=_SEEDLESS + _SEARCH_COST)
    costs = measured[_SEARCH_COST].astype("float64")
    return measured[_SEEDLESS].join(costs).groupby(_SEEDLESS, dropna=False).mean().reset_index()


def table_additivity_table(records: pd.DataFrame) -> pd.DataFrame:
    """The additivity of every latency table the cells planned on, where their method recorded
    it (``table_additivity`` in the plan's meta, as dp-depth does): per model, data set and table,
    the table's prediction of the base network (single-unit segments + stem, head and call)
    against its screened latency, and the relative error. Every cell screens the base network
    afresh, so a table has as many errors as distinct screenings: the row gives their medians,
    the error's range and the count. Empty when no cell recorded one.
    """
    rows = []
    for model, dataset, plan in zip(
        records["model"], records["dataset"], records["plan"], strict=True
    ):
        if pd.isna(plan):
            continue
        recorded = json.loads(plan).get("meta", {}).get("table_additivity")
        if recorded:
            rows.append({"model": model, "dataset": dataset, **recorded})
    if not rows:
        return pd.DataFrame(columns=_ADDITIVITY_COLUMNS)
    # cells that planned on the same table and the same base screening repeat the same row
    frame = pd.DataFrame(rows).drop_duplicates()
    grouped = frame.groupby(_ADDITIVITY_KEY, sort=False)
    summary = grouped[["outside_ms", "base_latency_ms", "relative_error"]].median()
    summary["relative_error_min"] = grouped["relative_error"].min()
    summary["relative_error_max"] = grouped["relative_error"].max()
    summary["base_screenings"] = grouped.size()
    return summary.reset_index()[_ADDITIVITY_COLUMNS]


def unmeasured_table(records: pd.DataFrame) -> pd.DataFrame:
    """Cells without measurements (infeasible or failed) and why: listed, never plotted."""
    unmeasured = records.loc[records["status"] != "ok", _UNMEASURED_COLUMNS]
    return unmeasured.sort_values(_UNMEASURED_COLUMNS).reset_index(drop=True)


def pairwise_table(records: pd.DataFrame) -> pd.DataFrame:
    """Every pair of methods at the same budget (one profile, model and data set): top-1 of B
    minus top-1 of A (percentage points) over the seeds both have, with its paired-bootstrap 95%
    interval over test images; ``significant`` when that interval excludes 0, and then ``better``
    names the winner.

    With one common seed, McNemar's exact p-value and the discordant counts (``only_a``: images
    only A gets right) are given too; with several, the same image enters once per seed, the
    pairs are not independent and McNemar does not apply (the bootstrap keeps an image's seeds
    together). Only cells that store per-image correctness are compared; methods with several
    configurations are told apart by their config.
    """
    measured = _with_optional_columns(records)
    measured = measured[(measured["status"] == "ok") & measured["test_correct"].notna()]
    measured = measured.assign(label=_method_labels(measured))
    budget = ["profile_hash", "model", "dataset", "budget_kind", "budget_value"]
    rows = []
    for key, cells in measured.groupby(budget, sort=True):
        by_label = {label: group for label, group in cells.groupby("label", sort=True)}
        for label_a, label_b in itertools.combinations(sorted(by_label), 2):
            row = _compare_pair(by_label[label_a], by_label[label_b])
            if row is not None:
                identity = dict(zip(budget, key, strict=True))
                rows.append(identity | {"method_a": label_a, "method_b": label_b} | row)
    return pd.DataFrame(rows, columns=["profile_hash", *_PAIRWISE_COLUMNS])


def wins_table(pairwise: pd.DataFrame) -> pd.DataFrame:
    """Who beats whom: per budget and method, the methods it beats and loses to significantly."""
    budget = ["model", "dataset", "budget_kind", "budget_value"]
    rows = []
    for key, pairs in pairwise.groupby(budget, sort=True):
        for method in sorted(set(pairs["method_a"]) | set(pairs["method_b"])):
            mine = pairs[(pairs["method_a"] == method) | (pairs["method_b"] == method)]
            decided = mine[mine["significant"]]
            others = np.where(
                decided["method_a"] == method, decided["method_b"], decided["method_a"]
            )
            won = decided["better"].to_numpy() == method
            rows.append(
                dict(zip(budget, key, strict=True))
                | {
                    "method": method,
                    "beats": ", ".join(sorted(others[won])),
                    "loses to": ", ".join(sorted(others[~won])),
                    "no significant difference": len(mine) - len(decided),
                }
            )
    return pd.DataFrame(
        rows, columns=[*budget, "method", "beats", "loses to", "no significant difference"]
    )


def write_report(
    source: Path | pd.DataFrame,
    out_dir: Path,
    *,
    x: XAxis = "latency",
    log_x: bool = False,
    methods: Sequence[str] | None = None,
) -> list[Path]:
    """Write, per profile, tables (CSV, Markdown, LaTeX), figures (PNG, SVG, PDF) and one
    self-contained HTML page holding both; with several profiles, an index page linking them.

    ``source`` is a consolidated run directory (its ``records.parquet`` is all that is read) or a
    records table. ``x`` and ``log_x`` choose the accuracy figure's x axis; ``methods`` reports on
    those methods only (``select_methods``). Returns the written files; each profile gets
    ``out_dir/<profile>-<hash>/``.
    """
    records = source if isinstance(source, pd.DataFrame) else read_consolidated(source)
    if records.empty:
        raise DepthbenchError("there are no records to report on: has the run finished a cell?")
    records = select_methods(records, methods)
    profiles = list(records.groupby("profile_hash", sort=True))
    written, pages = [], []
    for profile_hash, profile_records in profiles:
        name = profile_records["profile_name"].iloc[0]
        folder = Path(out_dir) / f"{_path_safe(name)}-{profile_hash[:12]}"
        folder.mkdir(parents=True, exist_ok=True)
        files = _write_profile(profile_records, folder, x, log_x, indexed=len(profiles) > 1)
        written += files
        pages.append(
            (name, profile_hash, files[-1], int((profile_records["status"] == "ok").sum()))
        )
    if len(profiles) > 1:
        written.append(_write_index(Path(out_dir), pages))
    return written


def select_methods(records: pd.DataFrame, methods: Sequence[str] | None) -> pd.DataFrame:
    """The records of ``methods`` (all if None) and of the ``original`` network, the reference
    every speed-up and drop is computed against. Fronts are then fronts among these methods."""
    if not methods:
        return records
    unknown = sorted(set(methods) - set(records["method"]))
    if unknown:
        raise DepthbenchError(
            f"--methods names {', '.join(map(repr, unknown))}, which the run does not have: "
            f"choose among {', '.join(sorted(set(records['method'])))}"
        )
    return records[records["method"].isin([*methods, BASELINE_METHOD])]


def compare_runs(run_a: pd.DataFrame, run_b: pd.DataFrame) -> pd.DataFrame:
    """Cell-by-cell differences of two runs, matched on model, data set, method (and config),
    budget, profile hash and seed.

    A cell is ``flagged`` when it is in one run only, its status changed, or its accuracy or
    latency moved beyond their noise. Latency: the two 95% intervals of the median do not overlap
    (a cell without one counts its median as a zero-width interval). Top-1: McNemar's exact test
    on the per-image correctness of both records gives p < 0.05 (``top1_p_value``); where a
    record lacks it, the Wilson intervals of the two top-1s do not overlap; where a record lacks
    the test-image count too, any difference counts. Top-5: the Wilson intervals, or any
    difference without the count.
    """
    for label, run in (("A", run_a), ("B", run_b)):
        duplicated = run.duplicated(_CELL)
        if duplicated.any():
            raise DepthbenchError(
                f"run {label} has {duplicated.sum()} cells with the same model, data set, method, "
                "budget, profile and seed; compare runs with one record per cell"
            )
    values = [
        "status", "top1", "top5", "test_images", "test_correct", "latency_ms_median",
        "latency_ms_ci_low", "latency_ms_ci_high",
    ]  # fmt: skip
    merged = (
        _with_optional_columns(run_a)[_CELL + values]
        .merge(
            _with_optional_columns(run_b)[_CELL + values],
            on=_CELL,
            how="outer",
            suffixes=("_a", "_b"),
            indicator="present",
        )
        .reset_index(drop=True)
    )
    merged["present"] = merged["present"].map(
        {"both": "both", "left_only": "A only", "right_only": "B only"}
    )
    merged["top1_diff_pp"] = merged["top1_b"] - merged["top1_a"]
    merged["latency_diff_ms"] = merged["latency_ms_median_b"] - merged["latency_ms_median_a"]
    low_a, high_a = _interval(merged, "a")
    low_b, high_b = _interval(merged, "b")
    merged["latency_changed"] = (low_b > high_a) | (high_b < low_a)
    merged["top1_p_value"] = [_mcnemar_p(row) for row in merged.itertuples()]
    top1_changed = np.where(
        merged["top1_p_value"].notna(),
        merged["top1_p_value"] < 1 - CONFIDENCE,
        _beyond_wilson(merged, "top1"),
    )
    merged["accuracy_changed"] = top1_changed | _beyond_wilson(merged, "top5")
    status_changed = (merged["status_a"] != merged["status_b"]).fillna(True).astype(bool)
    merged["flagged"] = (
        merged["latency_changed"]
        | merged["accuracy_changed"]
        | status_changed
        | (merged["present"] != "both")
    )
    return merged.drop(columns=["test_correct_a", "test_correct_b"])


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as text for people: 2 decimals (3 for milliseconds), each value that has its
    interval's columns as 'value [low, high]', seed counts as '1 seed', params and MACs in
    millions, marks for front membership, yes/no for other flags. (CSV keeps full precision.)"""
    shown = table.copy()
    for value, low, high in _WITH_INTERVAL:
        if {value, low, high} <= set(shown.columns):
            digits = _digits(value)
            shown[value] = [
                _interval_text(*numbers, digits=digits)
                for numbers in zip(shown[value], shown[low], shown[high], strict=True)
            ]
            shown = shown.drop(columns=[low, high])
    if "seeds" in shown:
        shown["seeds"] = shown["seeds"].map(lambda n: f"{n} seed" + ("s" if n != 1 else ""))
    for column in shown.columns:
        if column.endswith("_front"):
            shown[column] = shown[column].map({True: "*", False: ""})
        elif column in ("significant", "stable", "budget_met"):
            shown[column] = shown[column].map({True: "yes", False: "no"})
        elif column in ("params", "macs"):
            shown[column] = shown[column].map(lambda n: "" if pd.isna(n) else f"{n / 1e6:.2f}")
        elif column == "depth":
            shown[column] = shown[column].map(lambda n: "" if pd.isna(n) else f"{n:g}")
        elif column in ("mcnemar_p", "top1_p_value"):
            shown[column] = shown[column].map(lambda p: "" if pd.isna(p) else f"{p:.2g}")
        elif pd.api.types.is_float_dtype(shown[column]):
            shown[column] = shown[column].map(partial(_number_text, digits=_digits(column)))
    shown = shown.astype(object).where(shown.notna(), "")
    return shown.rename(columns=_HEADERS)


_WITH_INTERVAL = [
    ("top1", "top1_ci_low", "top1_ci_high"),
    ("latency_ms_median", "latency_ms_ci_low", "latency_ms_ci_high"),
    ("top1_diff_pp", "diff_ci_low", "diff_ci_high"),
]
_HEADERS = {
    "budget_kind": "budget kind",
    "budget_value": "budget",
    "seed": "seed(s)",
    "top1": "top-1 % [95% CI]",
    "top5": "top-5 %",
    "latency_ms_median": "latency ms [95% CI]",
    "latency_source": "latency from",
    "top1_diff_pp": "B - A pp [95% CI]",
    "method_a": "A",
    "method_b": "B",
    "only_a": "only A right",
    "only_b": "only B right",
    "mcnemar_p": "McNemar p",
    "speedup": "speed-up",
    "accuracy_drop_pp": "drop pp",
    "target_ms": "target ms",
    "budget_met": "budget met",
    "params": "params (M)",
    "macs": "MACs (M)",
    "search_wall_s": "search s",
    "search_steps": "search steps",
    "finetune_steps": "fine-tune steps",
    "latency_measurements": "latency measurements",
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


def _with_optional_columns(records: pd.DataFrame) -> pd.DataFrame:
    missing = {c: pd.Series(pd.NA, index=records.index, dtype=dtype)
               for c, dtype in _OPTIONAL_COLUMNS.items() if c not in records}  # fmt: skip
    return records.assign(**missing) if missing else records


def _aggregate(seeds: pd.DataFrame) -> dict[str, object]:
    seeds = seeds.sort_values("seed")
    row = {
        "status": "ok",
        "seeds": len(seeds),
        "seed": ", ".join(map(str, seeds["seed"])),
        "top5": seeds["top5"].mean(),
        "stable": bool(seeds["stable"].fillna(False).all()),
        # records from before sessions existed measured at cell time
        "latency_source": ", ".join(sorted(set(seeds["latency_source"].fillna("cell")))),
        "target_ms": seeds["target_ms"].mean(),
        "budget_met": pd.NA
        if seeds["budget_met"].isna().all()
        else bool(seeds["budget_met"].all()),
        **{size: seeds[size].astype("Float64").mean() for size in ("params", "macs", "depth")},
    }
    top1 = seeds["top1"].to_numpy(dtype=float)
    latency = seeds["latency_ms_median"].to_numpy(dtype=float)
    if len(seeds) == 1:
        one = seeds.iloc[0]
        return row | {
            "top1": top1[0],
            "top1_ci_low": np.nan,
            "top1_ci_high": np.nan,
            **_wilson_percent(top1[0], one["test_images"]),
            "latency_ms_median": latency[0],
            "latency_ms_ci_low": one["latency_ms_ci_low"],
            "latency_ms_ci_high": one["latency_ms_ci_high"],
        }
    mean, low, high = t_interval(top1)
    images = seeds["test_images"].iloc[0]
    wilson = _wilson_percent(mean, images if seeds["test_images"].nunique() == 1 else pd.NA)
    geometric, latency_low, latency_high = geometric_t_interval(latency)
    return row | {
        "top1": mean,
        "top1_ci_low": max(min(low, wilson.get("top1_ci_low", low)), 0.0),
        "top1_ci_high": min(max(high, wilson.get("top1_ci_high", high)), 100.0),
        "latency_ms_median": geometric,
        "latency_ms_ci_low": min(latency_low, seeds["latency_ms_ci_low"].min()),
        "latency_ms_ci_high": max(latency_high, seeds["latency_ms_ci_high"].max()),
    }


def _wilson_percent(top1: float, images: object) -> dict[str, float]:
    """Wilson interval of a top-1 percentage over ``images`` test images (none if unknown)."""
    if pd.isna(images) or pd.isna(top1):
        return {}
    images = int(images)
    low, high = wilson_interval(round(top1 * images / 100), images)
    return {"top1_ci_low": 100 * low, "top1_ci_high": 100 * high}


def _method_labels(records: pd.DataFrame) -> pd.Series:
    """The method's name, plus its config where the records hold it with several configs."""
    configs = records.groupby("method")["method_config"].transform("nunique")
    return records["method"].where(configs <= 1, records["method"] + " " + records["method_config"])


def _compare_pair(cells_a: pd.DataFrame, cells_b: pd.DataFrame) -> dict[str, object] | None:
    """The paired comparison of two methods' cells over their common seeds (None: none)."""
    seeds = sorted(set(cells_a["seed"]) & set(cells_b["seed"]))
    if not seeds:
        return None
    correct_a, correct_b = _correctness(cells_a, seeds), _correctness(cells_b, seeds)
    if correct_a.shape != correct_b.shape:  # different test sets: nothing to pair
        return None
    difference, low, high = paired_bootstrap_difference(correct_a, correct_b)
    significant = low > 0 or high < 0
    row = {
        "seeds": len(seeds),
        "top1_a": 100 * correct_a.mean(),
        "top1_b": 100 * correct_b.mean(),
        "top1_diff_pp": 100 * difference,
        "diff_ci_low": 100 * low,
        "diff_ci_high": 100 * high,
        "only_a": pd.NA,
        "only_b": pd.NA,
        "mcnemar_p": np.nan,
        "significant": significant,
        "better": "",
    }
    if significant:
        row["better"] = cells_b["label"].iloc[0] if difference > 0 else cells_a["label"].iloc[0]
    if len(seeds) == 1:
        test = mcnemar_exact(correct_a[0], correct_b[0])
        row |= {"only_a": test.only_a, "only_b": test.only_b, "mcnemar_p": test.p_value}
    return row


def _correctness(cells: pd.DataFrame, seeds: list[int]) -> np.ndarray:
    """(seeds, images) per-image correctness of one method's cells, in ``seeds`` order."""
    by_seed = cells.set_index("seed")
    return np.stack(
        [
            unpack_correct(by_seed.at[seed, "test_correct"], int(by_seed.at[seed, "test_images"]))
            for seed in seeds
        ]
    )


def _mcnemar_p(row: object) -> float:
    """McNemar's p-value of one compared cell, or NaN if a record lacks per-image correctness."""
    images = (row.test_images_a, row.test_images_b)
    correct = (row.test_correct_a, row.test_correct_b)
    if any(pd.isna(value) for value in (*images, *correct)) or images[0] != images[1]:
        return np.nan
    return mcnemar_exact(
        unpack_correct(correct[0], int(images[0])), unpack_correct(correct[1], int(images[1]))
    ).p_value


def _beyond_wilson(merged: pd.DataFrame, column: str) -> pd.Series:
    """Whether a percentage changed beyond its noise: Wilson intervals apart where both records
    say over how many images, any difference where one does not."""
    changed = _differs(merged, column)
    for index, row in merged.iterrows():
        values = (row[f"{column}_a"], row[f"{column}_b"])
        images = (row["test_images_a"], row["test_images_b"])
        if any(pd.isna(value) for value in (*values, *images)):
            continue
        (low_a, high_a), (low_b, high_b) = (
            _wilson_bounds(value, int(n)) for value, n in zip(values, images, strict=True)
        )
        changed[index] = low_b > high_a or high_b < low_a
    return changed.astype(bool)


def _wilson_bounds(percent: float, images: int) -> tuple[float, float]:
    low, high = wilson_interval(round(percent * images / 100), images)
    return 100 * low, 100 * high


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


def _interval_text(value: float, low: float, high: float, digits: int) -> str:
    if pd.isna(value):
        return ""
    if pd.isna(low) or pd.isna(high):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _write_profile(
    records: pd.DataFrame, folder: Path, x: XAxis, log_x: bool, indexed: bool
) -> list[Path]:
    """One profile's tables, figures and HTML page (written last, returned last)."""
    name, profile_hash = records["profile_name"].iloc[0], records["profile_hash"].iloc[0]
    title = f"{name} (profile {profile_hash})"
    table, unmeasured = results_table(records), unmeasured_table(records)
    pairwise = pairwise_table(records)
    results = _Table(
        table, _RESULTS_CAPTION.format(profile=name), f"tab:results-{_path_safe(name)}"
    )
    written = _write_table(results, folder / "results", title)
    missing = _Table(unmeasured, _UNMEASURED_CAPTION.format(profile=name),
                     f"tab:unmeasured-{_path_safe(name)}")  # fmt: skip
    if not unmeasured.empty:
        written += _write_table(missing, folder / "unmeasured", title)
    if not pairwise.empty:
        written += _write_pairwise(pairwise, folder / "pairwise", title)
    additivity = table_additivity_table(records)
    if not additivity.empty:
        caption = _ADDITIVITY_CAPTION.format(profile=name)
        label = f"tab:additivity-{_path_safe(name)}"
        written += _write_table(
            _Table(additivity, caption, label), folder / "table_additivity", title
        )
    short_title = f"{name} (profile {profile_hash[:12]})"
    figures = []
    if not table.empty:
        figure = accuracy_figure(table, x=x, log_x=log_x, title=short_title)
        figures.append(save_figure(figure, folder / f"accuracy_vs_{x}"))
    if table["speedup"].notna().any():
        figures.append(
            save_figure(speedup_drop_figure(table, short_title), folder / "speedup_vs_drop")
        )
    written += [path for paths in figures for path in paths]
    page = folder / "report.html"
    page.write_text(_html_page(title, results, missing, pairwise, figures, indexed))
    return [*written, page]


@dataclass(frozen=True)
class _Table:
    """A table as written for people: the columns that hold one value in every row (model, data
    set, fidelity, ...) go into the caption instead of repeating in each row."""

    frame: pd.DataFrame
    caption_text: str
    label: str

    @property
    def constant(self) -> list[str]:
        if self.frame.empty:
            return []
        return [c for c in _CONTEXT_COLUMNS
                if c in self.frame and self.frame[c].nunique(dropna=False) == 1]  # fmt: skip

    @property
    def shown(self) -> pd.DataFrame:
        return display_table(self.frame.drop(columns=self.constant))

    @property
    def caption(self) -> str:
        if not self.constant:
            return self.caption_text
        values = display_table(self.frame[self.constant].iloc[:1]).iloc[0]
        context = "; ".join(
            f"{_CAPTION_NAMES[column]} {value}".strip()
            for column, value in zip(self.constant, values, strict=True)
        )
        return f"{self.caption_text} Every row: {context}."

    @property
    def bold(self) -> pd.Series:
        """Rows on the global front (none in tables without one)."""
        if "global_front" in self.frame:
            return self.frame["global_front"].astype(bool)
        return pd.Series(False, index=self.frame.index)


_RESULTS_CAPTION = (
    "{profile}: top-1 accuracy and median latency with 95% intervals, speed-up and top-1 drop "
    "against the original network, and the deployed network's size; bold rows are on the "
    "global Pareto front."
)
_ADDITIVITY_CAPTION = (
    "Additivity of the latency tables the methods planned on under {profile}: the single-unit "
    "segments plus stem, head and call against the base network's screened latency."
)
_UNMEASURED_CAPTION = "{profile}: cells without measurements (never plotted) and why."
_CAPTION_NAMES = {
    "model": "model", "dataset": "data set", "budget_kind": "budget kind",
    "fidelity": "fidelity", "seeds": "", "seed": "seed(s)", "stable": "stable latency",
    "status": "status",
}  # fmt: skip


def _write_table(table: _Table, stem: Path, title: str) -> list[Path]:
    paths = [stem.with_suffix(suffix) for suffix in (".csv", ".md", ".tex")]
    table.frame.to_csv(paths[0], index=False)
    paths[1].write_text(f"# {title}\n\n{table.caption}\n\n{table.shown.to_markdown(index=False)}\n")
    paths[2].write_text(_latex(table))
    return paths


def _latex(table: _Table) -> str:
    """A booktabs table (``\\usepackage{booktabs}``) with caption and label; front rows bold."""
    shown = table.shown.reset_index(drop=True)
    bold = table.bold.to_numpy()
    raw = table.frame.drop(columns=table.constant)
    alignment = "".join(
        "r" if pd.api.types.is_numeric_dtype(raw[column]) else "l"
        for column in raw.columns
        if not column.endswith(("_ci_low", "_ci_high"))
    )
    styler = (
        shown.style.hide(axis="index")
        .format(escape="latex")
        .format_index(escape="latex", axis=1)
        .apply(lambda row: ["textbf:--rwrap;" if bold[row.name] else "" for _ in row], axis=1)
    )
    return styler.to_latex(
        caption=_latex_escape(table.caption),
        label=table.label,
        hrules=True,
        position_float="centering",
        column_format=alignment,
    )


def _latex_escape(text: str) -> str:
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
               "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
               "^": r"\textasciicircum{}"}  # fmt: skip
    return "".join(special.get(character, character) for character in text)


def _write_pairwise(pairwise: pd.DataFrame, stem: Path, title: str) -> list[Path]:
    """The pairs as CSV; Markdown with who beats whom first, then every pair."""
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md")]
    pairwise.to_csv(paths[0], index=False)
    wins = display_table(wins_table(pairwise))
    pairs = display_table(pairwise[_PAIRWISE_COLUMNS])
    paths[1].write_text(
        f"# {title}: methods compared at the same budget\n\n{_PAIRWISE_NOTE}\n\n"
        f"## Who beats whom\n\n{wins.to_markdown(index=False)}\n\n"
        f"## Every pair\n\n{pairs.to_markdown(index=False)}\n"
    )
    return paths


_PAIRWISE_NOTE = (
    "Top-1 of B minus top-1 of A on the same test images, with its paired-bootstrap 95% "
    "interval; significant when the interval excludes 0 (no correction for the number of pairs)."
)


def _html_page(
    title: str,
    results: _Table,
    unmeasured: _Table,
    pairwise: pd.DataFrame,
    figures: list[list[Path]],
    indexed: bool,
) -> str:
    """One page that needs no other file: the figures are embedded as base64 SVG. Each results
    row links to its method's unmeasured cells and each unmeasured cell back to its method."""
    methods = results.frame["method"].tolist()
    missing = unmeasured.frame["method"].tolist()
    first_row = {m: i for i, m in reversed(list(enumerate(methods)))}
    first_missing = {m: i for i, m in reversed(list(enumerate(missing)))}

    def results_row(i: int) -> dict[str, object]:
        method = methods[i]
        return {
            "id": f"method-{_path_safe(method)}" if first_row[method] == i else f"result-{i}",
            "bold": bool(results.bold.iloc[i]),
            "link": f"#unmeasured-{first_missing[method]}" if method in first_missing else None,
        }

    def unmeasured_row(i: int) -> dict[str, object]:
        method = missing[i]
        link = f"#method-{_path_safe(method)}" if method in first_row else None
        return {"id": f"unmeasured-{i}", "bold": False, "link": link}

    return _PAGE.render(
        title=title,
        indexed=indexed,
        results=_html_table(results, results_row),
        not_measured=[
            (f"#unmeasured-{i}", f"{row.method} at {row.budget_value:g}", row.status)
            for i, row in enumerate(unmeasured.frame.itertuples())
        ],
        unmeasured=_html_table(unmeasured, unmeasured_row) if missing else None,
        figures=[_html_figure(paths) for paths in figures],
        pairwise_note=_PAIRWISE_NOTE,
        wins=display_table(wins_table(pairwise)) if not pairwise.empty else None,
        pairs=display_table(pairwise[_PAIRWISE_COLUMNS]) if not pairwise.empty else None,
    )


def _html_table(table: _Table, row: Callable[[int], dict[str, object]]) -> dict[str, object]:
    shown = table.shown
    method_column = list(shown.columns).index("method")
    rows = [row(i) | {"cells": list(values)} for i, values in enumerate(shown.itertuples(False))]
    return {"caption": table.caption, "columns": list(shown.columns), "rows": rows,
            "link_column": method_column}  # fmt: skip


def _html_figure(paths: list[Path]) -> dict[str, object]:
    svg = next(path for path in paths if path.suffix == ".svg")
    return {
        "name": svg.stem.replace("_", " "),
        "data": base64.b64encode(svg.read_bytes()).decode("ascii"),
        "files": [(path.suffix[1:].upper(), path.name) for path in paths],
    }


def _write_index(out_dir: Path, pages: list[tuple[str, str, Path, int]]) -> Path:
    index = out_dir / "index.html"
    index.write_text(
        _INDEX.render(
            profiles=[
                (name, profile_hash, page.relative_to(out_dir).as_posix(), cells)
                for name, profile_hash, page, cells in pages
            ]
        )
    )
    return index


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 80em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
caption { caption-side: top; text-align: left; padding-bottom: 0.5em; color: #444; }
th, td { padding: 0.25em 0.6em; border-bottom: 1px solid #ddd; text-align: right; }
th { border-bottom: 2px solid #444; }
td:first-child, th:first-child { text-align: left; }
tr.front td { font-weight: bold; }
tr:target td { background: #fff3c4; }
figure { margin: 1em 0; }
figure img { max-width: 100%; }
nav a { margin-right: 1em; }
"""
_ENVIRONMENT = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
_TABLE_MACRO = """{% macro table(t) %}
<table>
<caption>{{ t.caption }}</caption>
<thead><tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>
{% for r in t.rows %}
<tr id="{{ r.id }}"{% if r.bold %} class="front"{% endif %}>
{% for v in r.cells %}
{% if loop.index0 == t.link_column and r.link %}<td><a href="{{ r.link }}">{{ v }}</a></td>
{% else %}<td>{{ v }}</td>
{% endif %}
{% endfor %}
</tr>
{% endfor %}
</tbody>
</table>
{% endmacro %}
{% macro frame(f) %}{{ f.to_html(index=False, border=0) | safe }}{% endmacro %}
"""
_PAGE = _ENVIRONMENT.from_string(
    _TABLE_MACRO
    + """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>"""
    + _STYLE
    + """</style>
</head>
<body>
<h1>{{ title }}</h1>
<nav>
{% if indexed %}<a href="../index.html">all profiles</a>{% endif %}
<a href="#results">results</a>
<a href="#figures">figures</a>
{% if unmeasured %}<a href="#unmeasured">unmeasured cells</a>{% endif %}
{% if pairs is not none %}<a href="#pairwise">pairwise comparisons</a>{% endif %}
</nav>
<section id="results">
<h2>Results</h2>
<p>A method's name links to its unmeasured cells, where it has some.</p>
{{ table(results) }}
{% if not_measured %}
<p>Not measured (never plotted):
{% for href, text, status in not_measured %}
<a href="{{ href }}">{{ text }}</a> ({{ status }}){{ "," if not loop.last else "." }}
{% endfor %}
</p>
{% endif %}
</section>
<section id="figures">
<h2>Figures</h2>
{% for f in figures %}
<figure>
<img src="data:image/svg+xml;base64,{{ f.data }}" alt="{{ f.name }}">
<figcaption>{{ f.name }}:
{% for kind, file in f.files %}<a href="{{ file }}">{{ kind }}</a> {% endfor %}</figcaption>
</figure>
{% endfor %}
</section>
{% if unmeasured %}
<section id="unmeasured">
<h2>Unmeasured cells</h2>
<p>A method's name links to its measured cells, where it has some.</p>
{{ table(unmeasured) }}
</section>
{% endif %}
{% if pairs is not none %}
<section id="pairwise">
<h2>Methods compared at the same budget</h2>
<p>{{ pairwise_note }}</p>
<h3>Who beats whom</h3>
{{ frame(wins) }}
<h3>Every pair</h3>
{{ frame(pairs) }}
</section>
{% endif %}
</body>
</html>
"""
)
_INDEX = _ENVIRONMENT.from_string(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>depthbench report</title>
<style>"""
    + _STYLE
    + """</style>
</head>
<body>
<h1>depthbench report</h1>
<p>One page per hardware profile: latencies of different profiles are never compared.</p>
<table>
<thead><tr><th>profile</th><th>hash</th><th>measured cells</th></tr></thead>
<tbody>
{% for name, profile_hash, href, cells in profiles %}
<tr><td><a href="{{ href }}">{{ name }}</a></td><td>{{ profile_hash }}</td><td>{{ cells }}</td></tr>
{% endfor %}
</tbody>
</table>
</body>
</html>
"""
)


def _path_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "profile"
