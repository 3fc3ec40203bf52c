"""asv: the dp-depth importance table of the demo model at smoke fidelity (goal: under 2 minutes).

The demo model is MobileNetV2 width 0.5 on digits at 32x32: 315 entries (upstream's exclude-zeros
set), each scored on the 144-image holdout right after the change. A cold table measures every
entry; a cached one only reads the 315 entry files back.
"""

import tempfile
import time
from pathlib import Path

import torch

from methods.dp_depth.importance import UPSTREAM_RECIPE, importance_entries, importance_table
from suite.core.trace import trace_model
from suite.run.data import load_data


def _demo():
    torch.manual_seed(0)  # the same weights in every process, so the cache key matches
    traced = trace_model("mobilenet_v2", width=0.5, num_classes=10, resolution=32)
    data = load_data("digits", resolution=32)
    entries = importance_entries(traced.chain.segments("upstream"), traced.chain, True)
    return traced, data, entries


class SmokeImportanceTable:
    timeout = 900

    def setup_cache(self):
        """A cache holding the demo table (asv runs this in a kept directory)."""
        path = Path("importance").resolve()
        importance_table(*_demo(), UPSTREAM_RECIPE, "smoke", path)
        return path

    def setup(self, cache_path):
        self.traced, self.data, self.entries = _demo()

    def track_cold_table_seconds(self, cache_path):
        with tempfile.TemporaryDirectory() as directory:
            start = time.perf_counter()
            importance_table(
                self.traced, self.data, self.entries, UPSTREAM_RECIPE, "smoke", Path(directory)
            )
            return time.perf_counter() - start

    track_cold_table_seconds.unit = "s"

    def time_cached_table(self, cache_path):
        importance_table(self.traced, self.data, self.entries, UPSTREAM_RECIPE, "smoke", cache_path)
