"""asv: time of the LayerMerge DP (knapsack over position and time, max over options, backtrack).

Input: MobileNetV2-1.0's 391 entries (171 segments with their merged-kernel options), T0 = 13.4
(the official demo's budget), prec = 10 (every upstream run). Upstream's option tables are not
public, so the latency of an option is the upstream keep-all time of its segment (replayed table)
scaled by (K / K_keep-all)², and a seeded synthetic importance stands in; the DP's cost does not
depend on the values. Goal: ≤ 50 ms.
"""

import importlib.resources

import numpy as np
import pandas as pd
from torchvision.models import mobilenet_v2

from methods.layermerge.options import table_options
from methods.layermerge.solver import Entry, solve
from suite.core.trace import trace

REFERENCE = importlib.resources.files("suite") / "reference"


class TimeLayerMergeSolve:
    def setup(self):
        with (REFERENCE / "ecdc__utils_table_mbv2_1.0_time_fish_gpu1_1228.csv").open() as file:
            table = pd.read_csv(file)
        keep_all = {
            (int(start), int(end)): float(time)
            for start, end, time in zip(table.st, table.end, table.time, strict=True)
        }
        chain = trace(mobilenet_v2(), 224).chain
        self.L = chain.L
        options = table_options(chain, {p: 1.0 for p in range(1, chain.L + 1)})
        widest = {}
        for option in options:
            segment = (option.start, option.end)
            widest[segment] = max(widest.get(segment, 0), option.kernel)
        rng = np.random.default_rng(0)
        self.entries = [
            Entry(
                o.start,
                o.end,
                o.key[2:],
                keep_all[(o.start, o.end)] * (o.kernel / widest[(o.start, o.end)]) ** 2,
                float(np.exp(rng.normal(-0.3 * (o.end - o.start), 0.2) / 100)),
            )
            for o in options
        ]

    def time_solve(self):
        solve(self.L, self.entries, 13.4, 10)
