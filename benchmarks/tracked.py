"""asv: the last default benchmark run's results as tracked metrics, per method and budget.

Read from ``records.parquet`` of the newest ``results/default-*`` run (written by `depthbench run`
or `nox -s demo`): the median latency in ms, and the top-1 accuracy drop against the original
network in percentage points (as in the report). asv treats lower as better, which both are. A
method and budget without a measured cell (infeasible, failed, or no default run yet) is skipped.

asv runs every parameter combination in its own process, so this module imports pandas only.
`depthbench run` reuses stored cells whatever the code version: to track a change, run the
default benchmark into a fresh results directory first (see the README).
"""

from pathlib import Path

import pandas as pd
from asv_runner.benchmarks.mark import SkipNotImplemented

RESULTS = Path(__file__).resolve().parent.parent / "results"


def last_default_run() -> pd.DataFrame | None:
    """The records of the most recently consolidated run of configs/default.yaml, if any."""
    runs = sorted(RESULTS.glob("default-*/records.parquet"), key=lambda path: path.stat().st_mtime)
    return pd.read_parquet(runs[-1]) if runs else None


RECORDS = last_default_run()
NO_RUN = "(no default run)"


class TrackDefaultRun:
    params = (
        [NO_RUN] if RECORDS is None else sorted(RECORDS["method"].unique()),
        [1.0] if RECORDS is None else sorted(RECORDS["budget_value"].unique(), reverse=True),
    )
    param_names = ["method", "budget"]

    def setup(self, method, budget):
        if RECORDS is None:
            raise SkipNotImplemented(f"no default run under {RESULTS}: run `depthbench run`")
        measured = RECORDS[RECORDS["status"] == "ok"]
        cell = measured[(measured["method"] == method) & (measured["budget_value"] == budget)]
        original = measured[measured["method"] == "original"]
        if cell.empty or original.empty:
            raise SkipNotImplemented(f"no measured {method} cell at budget {budget}")
        self.cell = cell.iloc[0]
        self.original_top1 = original["top1"].mean()

    def track_latency_ms(self, method, budget):
        return float(self.cell["latency_ms_median"])

    track_latency_ms.unit = "ms"

    def track_accuracy_drop_pp(self, method, budget):
        return float(self.original_top1 - self.cell["top1"])

    track_accuracy_drop_pp.unit = "pp"
