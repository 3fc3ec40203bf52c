"""relu-reduction's own steps: the stratified holdout sample, the sensitivity of the network the
cell trains (padding moved), the learned-α criterion, and the direction of the ranking.

The networks (fixture ``networks``), data and profile are ``tests/test_baselines.py``'s (real ONNX Runtime sessions).
"""

from __future__ import annotations

import copy
import types
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Subset

import methods.relu_reduction as relu_reduction
from methods.relu_reduction import (
    ReluReductionConfig,
    learned_alphas,
    sensitivities,
    sensitivity_holdout,
    shallow_plan,
)
from suite.core.budget import Budget
from suite.run.data import labels_of, load_data, stratified_subset
from suite.run.train import evaluate
from tests.test_baselines import contexts, data, plan_with, profile  # noqa: F401 (fixtures)
from tests.test_data import write_image

GENEROUS = Budget(kind="ms", value=1e6)  # met by the base network: the walk measures only it


@pytest.fixture(scope="module")
def networks(contexts):  # noqa: F811 (test_baselines' fixture, by its name)
    return contexts


@pytest.fixture(scope="module")
def class_sorted_folder(tmp_path_factory):
    """An ImageFolder tree of 5 classes x 10 training images: listed class by class."""
    root = tmp_path_factory.mktemp("folder")
    for label in "abcde":
        for i in range(10):
            write_image(root / "train" / label / f"{i}.jpg", i * 20)
        write_image(root / "val" / label / "0.jpg", 0)
    return load_data("imagefolder", root, resolution=8).train.dataset


def test_stratified_subset_of_a_class_sorted_folder_draws_every_class(class_sorted_folder):
    assert labels_of(class_sorted_folder).tolist() == sorted(labels_of(class_sorted_folder))

    ten = stratified_subset(class_sorted_folder, 10, seed=0)
    three = stratified_subset(class_sorted_folder, 3, seed=0)

    assert Counter(labels_of(ten).tolist()) == dict.fromkeys(range(5), 2)
    assert ten.indices == sorted(ten.indices)
    assert stratified_subset(class_sorted_folder, 10, seed=0).indices == ten.indices
    assert stratified_subset(class_sorted_folder, 10, seed=1).indices != ten.indices
    assert sorted(Counter(labels_of(three).tolist()).values()) == [1, 1, 1]
    assert stratified_subset(class_sorted_folder, 50, seed=0) is class_sorted_folder


def test_stratified_subset_keeps_unequal_class_shares():
    dataset = torch.utils.data.TensorDataset(torch.zeros(40, 1), torch.tensor([0] * 30 + [1] * 10))

    half = stratified_subset(dataset, 20, seed=3)

    assert Counter(labels_of(half).tolist()) == {0: 15, 1: 5}


def test_sensitivity_is_measured_on_a_stratified_sample_of_a_class_sorted_holdout(networks):
    ctx = networks("resnet18")
    by_class = np.argsort(labels_of(ctx.data.holdout), kind="stable").tolist()
    sorted_ctx = replace(ctx, data=replace(ctx.data, holdout=Subset(ctx.data.holdout, by_class)))

    sample = sensitivity_holdout(sorted_ctx, ReluReductionConfig(holdout_images=20))

    assert Counter(labels_of(sample).tolist()) == dict.fromkeys(range(10), 2)


def test_sensitivity_is_measured_on_the_shallow_plan_with_its_padding_moved(networks):
    """Position 8 is the middle ReLU of ResNet-18's layer2[1]: removing it merges the block's two
    3x3 convs, so the cell trains the first with padding 2 and the second with none. The
    hand-built torchvision network does the same; without the move the loss differs."""
    ctx = networks("resnet18")
    config = ReluReductionConfig(holdout_images=len(ctx.data.holdout))
    assert (7, 9) in shallow_plan(ctx.chain, {8}).groups(ctx.chain)
    linearised = copy.deepcopy(ctx.traced.model)
    block = linearised.layer2[1]
    block.forward = types.MethodType(_without_middle_relu, block)
    unmoved = evaluate(linearised, ctx.data.holdout).loss
    block.conv1.padding, block.conv2.padding = (2, 2), (0, 0)
    base = evaluate(ctx.traced.model, ctx.data.holdout).loss
    expected = evaluate(linearised, ctx.data.holdout).loss - base

    (sensitivity,) = sensitivities(ctx, [8], config)

    assert abs(unmoved - base - expected) > 0.01
    assert sensitivity == pytest.approx(expected, abs=1e-5)


def _without_middle_relu(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision's BasicBlock.forward (identity skip) without the ReLU between its convs."""
    return block.relu(block.bn2(block.conv2(block.bn1(block.conv1(x)))) + x)


@pytest.mark.parametrize("criterion", ["sensitivity", "learned-alpha"])
def test_candidates_are_removed_in_ascending_score(networks, monkeypatch, criterion):
    """Controlled scores in place of the criterion; the ranking handed to the walk, least needed
    activation first, is the candidates by ascending score."""
    ctx = networks("resnet18")
    scores = [0.3, -0.1, 0.7, 0.0, 0.5, 0.2, 0.9, 0.1]  # ResNet-18's candidates 2, 4, ..., 16
    monkeypatch.setattr(relu_reduction, "sensitivities", lambda *_: scores)
    monkeypatch.setattr(relu_reduction, "learned_alphas", lambda *_: (scores, {}))
    walked = []
    walk = relu_reduction.walk_ranking

    def spy(ranking, *args):
        walked.append(list(ranking))
        return walk(ranking, *args)

    monkeypatch.setattr(relu_reduction, "walk_ranking", spy)

    result = plan_with(ctx, "relu-reduction", GENEROUS, criterion=criterion)

    assert walked == [[4, 8, 16, 12, 2, 10, 6, 14]]
    assert result.meta["scores"] == scores and result.meta["removed"] == []


def test_learned_alpha_penalty_pushes_the_gates_towards_linear(networks):
    ctx = networks("resnet18")
    positions = relu_reduction.candidates(ctx.chain)

    def alphas(penalty: float) -> list[float]:
        config = ReluReductionConfig(alpha_epochs=0.05, alpha_penalty=penalty)
        return learned_alphas(ctx, positions, config)[0]

    free, penalised = alphas(0.0), alphas(10.0)

    assert all(p < f for p, f in zip(penalised, free, strict=True))
    assert max(penalised) < 1.0 - 0.1  # the penalty alone moves every α by over 0.1 in 2 steps


def test_learned_alpha_plan_meets_the_budget_and_reports_its_cost(networks):
    ctx = networks("resnet18")
    budget = Budget(kind="ms", value=ctx.base_latency_ms())

    result = plan_with(ctx, "relu-reduction", budget, criterion="learned-alpha", alpha_epochs=0.05)

    assert result.meta["criterion"] == "learned-alpha"
    assert (result.meta["search_steps"], result.meta["search_images"]) == (
        2,
        2 * 32,
    )  # 0.05 of 40 batches
    assert ctx.measure_plan(result.plan).median_ms <= budget.value


def test_sensitivity_reports_the_images_it_evaluated(networks):
    ctx = networks("resnet18")

    result = plan_with(ctx, "relu-reduction", GENEROUS)

    images = min(64, len(ctx.data.holdout))  # CONFIGS' holdout_images
    assert result.meta["search_steps"] == 0
    assert result.meta["search_images"] == (len(result.meta["candidates"]) + 1) * images
