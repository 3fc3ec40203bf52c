"""asv: time of the dp-depth solver (stage 1, Algorithm 3, stage 2, backtrack, check).

Input: the upstream MobileNetV2-1.0 latency table, T0 = 25, prec = 20 (the paper's setting). The
upstream importance table is not public, so a seeded synthetic one stands in over the same 315
measured entries; the solver's cost does not depend on the values. Goal: ≤ 50 ms.
"""

import importlib.resources

import numpy as np
import pandas as pd

from methods.dp_depth.solver import measured_entries, solve

REFERENCE = importlib.resources.files("suite") / "reference"


class TimeDPSolve:
    def setup(self):
        with (REFERENCE / "ecdc__utils_table_mbv2_1.0_time_fish_gpu1_1228.csv").open() as file:
            table = pd.read_csv(file)
        with (REFERENCE / "derived_mbv2_position_map.csv").open() as file:
            positions = pd.read_csv(file)
        self.L = int(table.end.max())
        self.latency = {
            (int(start), int(end)): float(time)
            for start, end, time in zip(table.st, table.end, table.time, strict=True)
        }
        self.segments = set(self.latency)
        block_end_rows = positions[(positions.width == 1.0) & (positions.block_end == 1)]
        self.block_ends = frozenset(int(position) for position in block_end_rows.position)
        rng = np.random.default_rng(0)
        self.importance = {
            (i, j, a_i, a_j): float(0.5 - 0.3 * (j - i) + rng.normal(scale=0.2))
            for i, j, a_i, a_j in measured_entries(self.segments, self.block_ends)
        }

    def time_solve(self):
        solve(self.L, self.segments, self.latency, self.importance, 25.0, 20, self.block_ends)
