"""asv: the default benchmark's results for the commit being benchmarked, per method and budget.

Read from ``records.parquet`` of the ``results/default-*`` runs (written by `depthbench run` or
`nox -s demo`): the records whose ``code_version`` is the checked-out commit, exactly (a record made
from a dirty tree carries ``+dirty`` and is never attributed to a commit), from the newest run that
has any. Tracked: the median latency in ms, and the top-1 accuracy drop against the original
network in percentage points (as in the report). asv treats lower as better, which both are. A
method and budget without a measured cell of this commit (infeasible, failed, or not run) is
skipped.

asv runs every parameter combination in its own process, so this module imports pandas only.
`depthbench run` reuses stored cells whatever the code version: to track a commit, run the default
benchmark into a fresh results directory at that commit first, then `nox -s asv` (which refuses a
dirty tree, see the README).
"""

import subprocess
from pathlib import Path

import pandas as pd
from asv_runner.benchmarks.mark import SkipNotImplemented

CHECKOUT = Path(__file__).resolve().parent.parent
RESULTS = CHECKOUT / "results"


def benchmarked_commit() -> str | None:
    """The commit checked out (asv benchmarks the working tree: ``-E existing:same``)."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=CHECKOUT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def records_of(commit: str | None, results: Path = RESULTS) -> pd.DataFrame | None:
    """The records of ``commit`` in the newest default run that has any, else None."""
    runs = sorted(results.glob("default-*/records.parquet"), key=lambda path: path.stat().st_mtime)
    for path in reversed(runs):
        records = pd.read_parquet(path)
        mine = records[records["code_version"] == commit]
        if not mine.empty:
            return mine
    return None


COMMIT = benchmarked_commit()
RECORDS = records_of(COMMIT)
NO_RUN = "(no default run)"


class TrackDefaultRun:
    params = (
        [NO_RUN] if RECORDS is None else sorted(RECORDS["method"].unique()),
        [1.0] if RECORDS is None else sorted(RECORDS["budget_value"].unique(), reverse=True),
    )
    param_names = ["method", "budget"]

    def setup(self, method, budget):
        if RECORDS is None:
            raise SkipNotImplemented(
                f"no default run of commit {COMMIT} under {RESULTS}: run `depthbench run` first"
            )
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
