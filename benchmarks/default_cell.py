"""asv: peak memory of one cell of the default benchmark (configs/default.yaml).

The cell is dp-depth at 0.7 of the base latency, seed 0: data, base network, the method's
planning (its quick importance table included), the shared fine-tune, merge, measurement and
evaluation, as `depthbench run` does it. The base network is trained (once, cached) in
``setup_cache``, a separate process, so training it is not counted.
"""

from suite.core.budget import Budget
from suite.run.config import DEFAULT_CONFIG, load_experiment
from suite.run.grid import base_weights, grid, make_cell_runner

METHOD, BUDGET = "dp-depth", Budget(kind="fraction", value=0.7)


class PeakmemDefaultCell:
    timeout = 1800

    def setup_cache(self):
        base_weights(load_experiment(DEFAULT_CONFIG))

    def setup(self, _):
        experiment = load_experiment(DEFAULT_CONFIG)
        self.cell = next(
            cell for cell in grid(experiment) if (cell.method, cell.budget) == (METHOD, BUDGET)
        )
        self.run_cell = make_cell_runner(experiment, run_id="asv")

    def peakmem_dp_depth_cell(self, _):
        record = self.run_cell(self.cell)
        if record.status == "failed":
            raise RuntimeError(f"the default dp-depth cell failed: {record.reason}")
