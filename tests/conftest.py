"""Shared fixtures: small real networks with non-trivial BN statistics."""

from __future__ import annotations

import torch
from hypothesis import settings
from torch import nn

# The test networks are tiny: a second torch thread buys nothing and contends with the ONNX Runtime
# sessions the tests measure with (on 2 cores it made some tests several times slower).
torch.set_num_threads(1)

# Every hypothesis test runs without a deadline: examples that build networks, frames or files take
# as long as a busy machine makes them take, and that must never fail a test.
settings.register_profile("depthbench", deadline=None)
settings.load_profile("depthbench")


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN layer random statistics and affine parameters, so folding is really tested."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) - 0.5)
    return model.eval()
