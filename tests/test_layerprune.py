"""LayerPrune's own steps against independent computations.

- candidates: VGG's convs with C_in = C_out, counted from torchvision's layer list (VGG19: 12,
  VGG11: 4), including those followed by a pool, which a removal keeps;
- a removed conv before a pool: the deploy network, the trainable network and torchvision's VGG
  with that conv, BN and ReLU replaced by the identity compute the same logits;
- ranking direction: with controlled importance and a cost model for the latency (the number of
  convs of the deploy network), the walk removes the least important blocks first, in order;
- the ensemble: the mean of the per-criterion ranks, from controlled criterion scores;
- imprinting: the accuracy of imprinted class weights on hand-made features, the pooled features
  read where torchvision's own modules produce them, the holdout read and the test split never.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, Subset
from torchvision.models import resnet18, vgg11, vgg11_bn, vgg19_bn

import methods.layerprune as layerprune
from methods.layerprune import (
    Spent,
    candidates,
    ensemble,
    ensemble_members,
    importance,
    imprinted_accuracy,
    imprinting_gain,
    plan_layerprune,
    prune_plan,
)
from suite.core.budget import Budget
from suite.core.method import PlanContext
from suite.core.plan import Plan
from suite.core.realize import deploy_network, trainable_network
from suite.core.trace import trace
from suite.errors import DepthbenchError
from suite.measure.profiles import read_profile
from suite.run.cell import MERGE_TOLERANCE
from suite.run.data import eval_loader, load_data, train_loader
from suite.run.train import FinetuneRecipe
from tests.conftest import randomize_batchnorm

PROFILE = Path(__file__).parent / "data" / "profiles" / "test-cpu-fast.yaml"
VGG_RESOLUTION = 32  # VGG's five pools need 32 px


def cifar_vgg(make) -> nn.Module:
    """A torchvision VGG with a CIFAR-style head (global pool, one linear layer)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = make(num_classes=10)
    model.avgpool, model.classifier = nn.AdaptiveAvgPool2d(1), nn.Linear(512, 10)
    return randomize_batchnorm(model)


def torchvision_convs(model: nn.Module) -> list[int]:
    """Indices in ``model.features`` of its convs, in order (unit p is the p-th)."""
    return [k for k, layer in enumerate(model.features) if isinstance(layer, nn.Conv2d)]


@pytest.fixture(scope="module")
def data():
    digits = load_data("digits", resolution=VGG_RESOLUTION)
    return replace(
        digits,
        train=Subset(digits.train, range(256)),
        holdout=Subset(digits.holdout, range(64)),
        test=Subset(digits.test, range(32)),
    )


def context(traced, data, screen=None) -> PlanContext:
    """A planning context whose latencies, where a test needs them, come from ``screen``."""
    recipe = FinetuneRecipe(steps=2, lr=0.01, batch_size=32)
    profile = read_profile(PROFILE)
    return PlanContext(
        traced, profile, data, recipe, screen, tables=None, base_latency=None, confirm=screen
    )


# candidates


@pytest.mark.parametrize(("make", "count"), [(vgg19_bn, 12), (vgg11_bn, 4)])
def test_vgg_candidates_are_every_conv_with_as_many_inputs_as_outputs(make, count):
    model = cifar_vgg(make)
    layers = model.features
    same = [
        p
        for p, k in enumerate(torchvision_convs(model), start=1)
        if layers[k].in_channels == layers[k].out_channels
    ]

    found = [c.units for c in candidates(trace(model, VGG_RESOLUTION).chain)]

    assert found == [(p,) for p in same] and len(found) == count


def test_a_removed_conv_keeps_its_pool_and_deploys_exactly():
    """VGG11's units 4, 6 and 8 are each followed by a pool; removing them is torchvision's VGG11
    with (conv, BN, ReLU) -> identity at those places, the pools kept."""
    model = cifar_vgg(vgg11_bn)
    traced = trace(model, VGG_RESOLUTION)
    removed = [c for c in candidates(traced.chain) if c.units[0] in (4, 6, 8)]
    assert all(p in traced.chain.barriers for c in removed for p in c.units)
    plan = prune_plan(traced.chain, removed)
    reference = copy.deepcopy(model).eval()
    for k in (torchvision_convs(model)[p - 1] for p in (4, 6, 8)):
        for layer in (k, k + 1, k + 2):  # conv, BN, ReLU
            reference.features[layer] = nn.Identity()
    images = torch.randn(
        4, 3, VGG_RESOLUTION, VGG_RESOLUTION, generator=torch.Generator().manual_seed(0)
    )

    trainable = trainable_network(traced, plan).eval()
    with torch.no_grad():
        expected = reference(images)
        trained = trainable(images)
        deployed = deploy_network(trainable)(images)

    scale = expected.abs().max()
    assert (trained - expected).abs().max() <= MERGE_TOLERANCE * scale
    assert (deployed - trained).abs().max() <= MERGE_TOLERANCE * scale


def test_a_conv_that_changes_the_channels_before_a_pool_cannot_be_removed():
    chain = trace(cifar_vgg(vgg11_bn), VGG_RESOLUTION).chain  # unit 2: 64 -> 128, then a pool
    everything = frozenset(range(1, chain.L + 1))
    with pytest.raises(DepthbenchError, match="deleting unit 2 changes the feature shape"):
        Plan(chain.original_activations - {2}, everything, frozenset({2})).validate(chain)


# ranking direction


def conv_count(network: nn.Module) -> SimpleNamespace:
    """A deterministic latency source: one millisecond per conv of the deploy network."""
    return SimpleNamespace(
        median_ms=float(sum(isinstance(m, nn.Conv2d) for m in network.modules()))
    )


def test_the_least_important_blocks_are_removed_first(data, monkeypatch):
    traced = trace(randomize_batchnorm(resnet18(num_classes=10)), VGG_RESOLUTION)
    ctx = context(traced, data, screen=conv_count)
    blocks = candidates(traced.chain)  # (2, 3), (4, 5), (8, 9), (12, 13), (16, 17)
    controlled = [0.5, 0.1, 0.4, 0.2, 0.3]
    monkeypatch.setattr(layerprune, "importance", lambda *args: controlled)
    base = ctx.measure_plan(Plan.original(traced.chain)).median_ms
    two_blocks_fewer = Budget(kind="ms", value=base - 4)  # 2 convs per block

    result = plan_layerprune(ctx, two_blocks_fewer, layerprune.LayerPruneConfig())

    assert result.meta["removed_blocks"] == [[4, 5], [12, 13]]
    assert result.plan.deleted == {4, 5, 12, 13} and len(blocks) == 5


def test_the_ensemble_ranks_blocks_by_their_mean_rank(data, monkeypatch):
    """Four blocks scored by the four criteria; the ensemble is each block's mean rank."""
    traced = trace(randomize_batchnorm(resnet18(num_classes=10)), VGG_RESOLUTION)
    ctx = context(traced, data)
    blocks = candidates(traced.chain)[:4]
    per_block = {  # criterion -> importance of the four blocks
        "taylor_gate": [0.1, 0.2, 0.3, 0.4],  # ranks 1 2 3 4
        "weight_magnitude": [2.0, 1.0, 4.0, 3.0],  # ranks 2 1 4 3
        "bn_scale": [5.0, 6.0, 7.0, 8.0],  # ranks 1 2 3 4
        "imprinting": [0.4, 0.3, 0.2, 0.1],  # ranks 4 3 2 1
    }

    def criterion_scores(ctx, criterion, positions, batches, spent):
        return {
            p: torch.tensor([per_block[criterion][b]])
            for b, block in enumerate(blocks)
            for p in block.gated
        }

    monkeypatch.setattr(layerprune, "filter_criteria", criterion_scores)
    monkeypatch.setattr(layerprune, "imprinting_gain", lambda *a: per_block["imprinting"])

    scores = importance(ctx, blocks, "ensemble", batches=1, spent=Spent())

    assert scores == pytest.approx([2.0, 2.0, 3.0, 3.0])
    assert ensemble([[1.0, 1.0, 2.0]]) == [1.5, 1.5, 3.0]  # ties share their mean rank


def test_the_ensemble_leaves_bn_scale_out_without_batch_norm(data):
    plain = trace(cifar_vgg(vgg11), VGG_RESOLUTION)
    with_bn = trace(cifar_vgg(vgg11_bn), VGG_RESOLUTION)

    assert "bn_scale" not in ensemble_members(context(plain, data), candidates(plain.chain))
    assert "bn_scale" in ensemble_members(context(with_bn, data), candidates(with_bn.chain))


# imprinting


def test_imprinted_weights_are_the_normalised_class_means():
    """Class 0 lies along x, class 1 along y (lengths differ, so only a normalised mean works);
    a query goes to the class of the larger cosine."""
    features = torch.tensor([[10.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.2, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    queries = torch.tensor([[3.0, 1.0], [1.0, 3.0], [1.0, 1.2], [1.2, 1.0]])

    accuracy = imprinted_accuracy(features, labels, queries, torch.tensor([0, 1, 1, 1]), 3)

    assert accuracy == 0.75  # the last query is nearer class 0


class Untouchable(Dataset):
    def __len__(self):
        raise AssertionError("the test split was read")

    def __getitem__(self, index):
        raise AssertionError("the test split was read")


def test_imprinting_scores_a_block_by_its_holdout_accuracy_gain(data):
    """VGG11 unit 7 reads the map after the pool of unit 6 and writes the map after its ReLU;
    the features there are taken from torchvision's own modules by forward hooks."""
    model = cifar_vgg(vgg11_bn)
    traced = trace(model, VGG_RESOLUTION)
    ctx = context(traced, replace(data, test=Untouchable()))
    block = next(c for c in candidates(traced.chain) if c.units == (7,))
    conv7 = torchvision_convs(model)[6]
    spent = Spent()

    gain = imprinting_gain(ctx, [block], batches=2, spent=spent)[0]

    def pooled(batches) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        seen: dict[str, list] = {"in": [], "out": []}
        hooks = [
            model.features[conv7 - 1].register_forward_hook(
                lambda m, i, o: seen["in"].append(o.mean(dim=(2, 3)))
            ),
            model.features[conv7 + 2].register_forward_hook(
                lambda m, i, o: seen["out"].append(o.mean(dim=(2, 3)))
            ),
        ]
        labels = []
        with torch.no_grad():
            for images, targets in batches:
                model.eval()(images)
                labels.append(targets)
        for hook in hooks:
            hook.remove()
        return {k: torch.cat(v) for k, v in seen.items()}, torch.cat(labels)

    train, labels = pooled(list(train_loader(data.train, 32, ctx.seed))[:2])
    holdout, truth = pooled(eval_loader(data.holdout, 32))
    accuracy = {
        k: imprinted_accuracy(train[k], labels, holdout[k], truth, data.num_classes)
        for k in ("in", "out")
    }
    assert gain == pytest.approx(accuracy["out"] - accuracy["in"])
    assert spent.images == 2 * 32 + len(data.holdout)
