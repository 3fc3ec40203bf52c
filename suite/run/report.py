"""Accuracy-latency Pareto reports over the results store, and run-to-run comparison.

A latency number means something only under the hardware profile it was measured with, so every
table and plot here covers exactly one profile hash; a report over several profiles writes one set
of tables and plots per profile.

Every number carries its 95% interval (formulas in ``suite.run.stats``). A table row is one cell
aggregated over its seeds (``aggregate_seeds``); fronts are computed on those aggregates. Methods
at the same budget are compared pairwise on the same test images (``pairwise_table``).
"""

import html
import itertools
import json
import re
from functools import partial
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from suite.errors import DepthbenchError
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

BASELINE_METHOD = "original"
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
    "model", "dataset", "method", "budget_kind", "budget_value", "seeds", "seed", "fidelity",
    "top1", "top1_ci_low", "top1_ci_high", "top5", "latency_ms_median", "latency_ms_ci_low",
    "latency_ms_ci_high", "stable", "speedup", "accuracy_drop_pp", "method_front", "global_front",
]  # fmt: skip
_PAIRWISE_COLUMNS = [
    "model", "dataset", "budget_kind", "budget_value", "method_a", "method_b", "seeds", "top1_a",
    "top1_b", "top1_diff_pp", "diff_ci_low", "diff_ci_high", "only_a", "only_b", "mcnemar_p",
    "significant", "better",
]  # fmt: skip
# Columns newer than some stored runs: added empty when a run's Parquet lacks them.
_OPTIONAL_COLUMNS = {"test_images": "Int64", "test_correct": "string"}
_ADDITIVITY_COLUMNS = [
    "model", "dataset", "table_method", "segment_sum_ms", "outside_ms", "base_latency_ms",
    "relative_error",
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
    latency intervals. ``stable`` only if every seed was; top-5 is the mean.
    """
    measured = _with_optional_columns(records)
    measured = measured[measured["status"] == "ok"]
    rows = [
        {**dict(zip(_SEEDLESS, key, strict=True)), **_aggregate(group)}
        for key, group in measured.groupby(_SEEDLESS, dropna=False, sort=True)
    ]
    columns = _SEEDLESS + [
        "status", "seeds", "seed", "top1", "top1_ci_low", "top1_ci_high", "top5",
        "latency_ms_median", "latency_ms_ci_low", "latency_ms_ci_high", "stable",
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def results_table(records: pd.DataFrame) -> pd.DataFrame:
    """The measured cells of ONE profile, aggregated over seeds (``aggregate_seeds``): top-1 and
    latency with their 95% intervals, speed-up and accuracy drop against the ``original``
    network of the same model and data set, and front membership of the aggregates.

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
    frame = frame.join(baseline, on=_NETWORK)
    frame["speedup"] = frame["baseline_ms"] / frame["latency_ms_median"]
    frame["accuracy_drop_pp"] = frame["baseline_top1"] - frame["top1"]
    ordered = frame.sort_values(["model", "dataset", "method", "latency_ms_median"])
    return ordered[_TABLE_COLUMNS].reset_index(drop=True)


def table_additivity_table(records: pd.DataFrame) -> pd.DataFrame:
    """The additivity of every latency table the cells planned on, where their method recorded
    it (``table_additivity`` in the plan's meta, as dp-depth does): per model, data set and table
    method, the table's prediction of the base network (single-unit segments + stem, head and
    call) against its screened latency, and the relative error. Empty when no cell recorded one.
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
    frame = pd.DataFrame(rows)
    # cells that planned on the same table and base measurement repeat the same row
    return frame.drop_duplicates(_ADDITIVITY_COLUMNS)[_ADDITIVITY_COLUMNS].reset_index(drop=True)


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
        additivity = table_additivity_table(profile_records)
        if not additivity.empty:
            written += _write_tables(additivity, folder / "table_additivity", title)
        unmeasured = unmeasured_table(profile_records)
        if not unmeasured.empty:
            written += _write_tables(unmeasured, folder / "unmeasured", title)
        pairwise = pairwise_table(profile_records)
        if not pairwise.empty:
            written += _write_pairwise(pairwise, folder / "pairwise", title)
        short_title = f"{profile_name} (profile {profile_hash[:12]})"
        if not table.empty:
            written += _plot_accuracy_vs_latency(table, folder / "accuracy_vs_latency", short_title)
        if table["speedup"].notna().any():
            written += _plot_speedup_vs_drop(table, folder / "speedup_vs_drop", short_title)
    return written


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
    interval's columns as 'value [low, high]', seed counts as '1 seed', marks for front
    membership. (CSV keeps full precision instead.)"""
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
        elif column == "significant":
            shown[column] = shown[column].map({True: "yes", False: "no"})
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
    "top1_diff_pp": "B - A pp [95% CI]",
    "method_a": "A",
    "method_b": "B",
    "only_a": "only A right",
    "only_b": "only B right",
    "mcnemar_p": "McNemar p",
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


def _write_tables(table: pd.DataFrame, stem: Path, title: str) -> list[Path]:
    shown = display_table(table)
    paths = [stem.with_suffix(suffix) for suffix in (".csv", ".md", ".tex", ".html")]
    table.to_csv(paths[0], index=False)
    paths[1].write_text(f"# {title}\n\n{shown.to_markdown(index=False)}\n")
    paths[2].write_text(shown.to_latex(index=False, escape=True, caption=title))
    paths[3].write_text(f"<h1>{html.escape(title)}</h1>\n{shown.to_html(index=False)}\n")
    return paths


def _write_pairwise(pairwise: pd.DataFrame, stem: Path, title: str) -> list[Path]:
    """The pairs as CSV; Markdown with who beats whom first, then every pair."""
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md")]
    pairwise.to_csv(paths[0], index=False)
    wins = display_table(wins_table(pairwise))
    pairs = display_table(pairwise[_PAIRWISE_COLUMNS])
    paths[1].write_text(
        f"# {title}: methods compared at the same budget\n\n"
        "Top-1 of B minus top-1 of A on the same test images, with its paired-bootstrap 95% "
        "interval; significant when the interval excludes 0 (no correction for the number of "
        "pairs).\n\n"
        f"## Who beats whom\n\n{wins.to_markdown(index=False)}\n\n"
        f"## Every pair\n\n{pairs.to_markdown(index=False)}\n"
    )
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
        "median latency (ms)\nbars: 95% intervals; lines: per-method fronts, dashed: global front",
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
        yerr=[
            (data["top1"] - data["top1_ci_low"]).fillna(0),
            (data["top1_ci_high"] - data["top1"]).fillna(0),
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
