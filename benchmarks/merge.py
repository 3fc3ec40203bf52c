"""asv: time to merge MobileNetV2-1.0 (224x224) into its deploy network.

``deploy_network`` folds every BN and fuses each merge group into one conv. Two plans bound the
work: the original network (BN folding only, 52 convs stay) and every inverted-residual block
merged into one conv (depthwise kernels expanded to dense, 17 groups).
"""

from suite.core.plan import Plan
from suite.core.realize import deploy_network, trainable_network
from suite.core.trace import trace_model


class TimeMergeMobileNetV2:
    params = ["bn-fold-only", "every-block-merged"]
    param_names = ["plan"]
    timeout = 300

    def setup(self, plan_name):
        traced = trace_model("mobilenet_v2", width=1.0, num_classes=1000, resolution=224)
        chain = traced.chain
        if plan_name == "bn-fold-only":
            plan = Plan.original(chain)
        else:
            plan = Plan(activations=chain.block_ends, boundaries=chain.block_ends)
        self.trainable = trainable_network(traced, plan).eval()

    def time_deploy_network(self, plan_name):
        deploy_network(self.trainable)
