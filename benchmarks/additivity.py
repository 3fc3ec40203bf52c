"""asv: how well a latency table's sum predicts the network (goals: |error| <= 20 % at 32x32,
<= 10 % at 224x224), under the default profile cpu-onnxruntime and its table method.

The error is ``suite.measure.tables.measure_additivity``'s: the original network's single-unit
segments plus its stem, head and one call, against its measured end-to-end latency; the median
of 3 fresh checks. 32x32 is the default cell's network (MobileNetV2-0.5, 10 classes), 224x224
MobileNetV2-1.0 with 1000 classes.
"""

from suite.core.trace import trace_model
from suite.measure.profiles import load_profile
from suite.measure.tables import measure_additivity

PROFILE = "cpu-onnxruntime"
NETWORKS = {32: (0.5, 10), 224: (1.0, 1000)}  # resolution: (width, classes)


class Additivity:
    timeout = 900
    params = [32, 224]
    param_names = ["resolution"]

    def setup(self, resolution):
        width, classes = NETWORKS[resolution]
        self.traced = trace_model(
            "mobilenet_v2", width=width, num_classes=classes, resolution=resolution
        )
        self.profile = load_profile(PROFILE)

    def track_additivity_error_pct(self, resolution):
        return 100 * measure_additivity(self.traced, self.profile, repeats=3).relative_error

    track_additivity_error_pct.unit = "%"
