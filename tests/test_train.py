"""The shared recipe: it learns, it is seeded, KD and lr scales do what they say; checkpoints."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn
from torch.utils.data import TensorDataset

from suite.core.models import KNOWN_MODELS, build_model
from suite.errors import DepthbenchError
from suite.run.data import load_data
from suite.run.train import FinetuneRecipe, evaluate, finetune, load_checkpoint, train_base

FEW_STEPS = FinetuneRecipe(steps=6, lr=0.1, batch_size=32)


@pytest.fixture(scope="module")
def digits8():
    return load_data("digits", resolution=8)


def tiny_network(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.2),  # in-model randomness the seed must also fix
        nn.Linear(64, 10),
    )


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    first, second = a.state_dict(), b.state_dict()
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_recipe_length_is_epochs_or_steps():
    assert FinetuneRecipe(epochs=0.5).steps is None
    with pytest.raises(ValidationError, match="exactly one of epochs or steps"):
        FinetuneRecipe(epochs=1, steps=10)
    with pytest.raises(ValidationError, match="exactly one of epochs or steps"):
        FinetuneRecipe()
    with pytest.raises(ValidationError, match="nesterov needs a positive momentum"):
        FinetuneRecipe(steps=1, momentum=0)


def test_evaluate_matches_a_brute_force_count():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 12, generator=generator)
    labels = torch.randint(0, 12, (300,), generator=generator)
    accuracy = evaluate(nn.Identity(), TensorDataset(logits, labels), batch_size=64)
    ranks = [(row > row[label]).sum().item() for row, label in zip(logits, labels, strict=True)]
    assert accuracy.top1 == pytest.approx(100 * np.mean([r == 0 for r in ranks]))
    assert accuracy.top5 == pytest.approx(100 * np.mean([r < 5 for r in ranks]))
    expected_loss = -torch.log_softmax(logits, 1)[torch.arange(300), labels].mean().item()
    assert accuracy.loss == pytest.approx(expected_loss, rel=1e-5)


def test_top5_is_omitted_with_five_classes_or_fewer():
    dataset = TensorDataset(torch.eye(5), torch.arange(5))
    accuracy = evaluate(nn.Identity(), dataset)
    assert (accuracy.top1, accuracy.top5) == (100.0, None)


def test_finetune_learns_digits(digits8):
    network = tiny_network()
    before = evaluate(network, digits8.test).top1
    finetune(network, digits8, FinetuneRecipe(epochs=1, lr=0.1, batch_size=32))
    after = evaluate(network, digits8.test).top1
    assert before < 20 and after > 60
    assert not network.training


def test_same_seed_gives_bit_identical_weights_and_leaves_the_callers_rng_alone(digits8):
    first, second, third = tiny_network(), tiny_network(), tiny_network()
    rng_state = torch.get_rng_state()
    finetune(first, digits8, FEW_STEPS)
    assert torch.equal(torch.get_rng_state(), rng_state)
    finetune(second, digits8, FEW_STEPS)
    finetune(third, digits8, FEW_STEPS.model_copy(update={"seed": 1}))
    assert same_weights(first, second)
    assert not same_weights(first, third)


def test_progress_reports_every_step(digits8):
    seen = []
    finetune(tiny_network(), digits8, FEW_STEPS, progress=lambda done, total: seen.append(done))
    assert seen == list(range(1, 7))
    seen.clear()
    finetune(
        tiny_network(),
        digits8,
        FinetuneRecipe(epochs=0.5, batch_size=256),
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen[-1] == (3, 3)  # half of 5 full batches of 256 (1293 images), rounded up


def test_lr_scale_by_parameter_or_name(digits8):
    untouched, network = tiny_network(), tiny_network()
    head = network[6]
    finetune(network, digits8, FEW_STEPS, lr_scale={head.weight: 0.0, "6.bias": 0.0})
    assert torch.equal(head.weight, untouched[6].weight)
    assert torch.equal(head.bias, untouched[6].bias)
    assert not torch.equal(network[0].weight, untouched[0].weight)
    with pytest.raises(DepthbenchError, match="'7.weight', which is not a model parameter"):
        finetune(tiny_network(), digits8, FEW_STEPS, lr_scale={"7.weight": 10.0})
    with pytest.raises(DepthbenchError, match="not the model's"):
        finetune(tiny_network(), digits8, FEW_STEPS, lr_scale={untouched[0].weight: 10.0})


def test_full_distillation_ignores_the_labels(digits8):
    """With kd_weight 1 the loss is the KL to the teacher alone: shuffled labels change nothing."""
    teacher = finetune(tiny_network(seed=5), digits8, FEW_STEPS)
    labels = digits8.train.tensors[1]
    shuffled = TensorDataset(digits8.train.tensors[0], labels[torch.randperm(len(labels))])
    relabelled = replace(digits8, train=shuffled)
    results = {}
    for kd_weight in (1.0, 0.5):
        recipe = FEW_STEPS.model_copy(update={"kd_weight": kd_weight, "kd_temperature": 2.0})
        true = finetune(tiny_network(), digits8, recipe, teacher=teacher)
        wrong = finetune(tiny_network(), relabelled, recipe, teacher=teacher)
        results[kd_weight] = same_weights(true, wrong)
    assert results == {1.0: True, 0.5: False}
    with pytest.raises(DepthbenchError, match="pass the base network as teacher"):
        finetune(tiny_network(), digits8, FEW_STEPS.model_copy(update={"kd_weight": 0.3}))


def test_divergence_is_a_clear_error(digits8):
    with pytest.raises(DepthbenchError, match="diverged at step .*lower the lr"):
        finetune(tiny_network(), digits8, FinetuneRecipe(steps=20, lr=1e12, batch_size=32))


def test_build_model_knows_the_suites_networks():
    assert set(KNOWN_MODELS) >= {"mobilenet_v2", "resnet18", "resnet34", "vgg19_bn"}
    network = build_model("mobilenet_v2", num_classes=7, width=0.25).eval()
    assert network(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    assert network.features[0][0].out_channels == 8  # 32 * 0.25
    with pytest.raises(DepthbenchError, match="unknown model 'resnet50'.*mobilenet_v2, resnet18"):
        build_model("resnet50", 10)
    with pytest.raises(DepthbenchError, match="only mobilenet_v2"):
        build_model("resnet18", 10, width=0.5)
    with pytest.raises(DepthbenchError, match="1000 classes"):
        build_model("resnet18", 10, pretrained=True)


def test_train_base_trains_once_and_caches(tmp_path):
    data = load_data("digits", resolution=8)
    recipe = FinetuneRecipe(steps=2, batch_size=32)
    path = train_base("mobilenet_v2", data, recipe, tmp_path, width=0.25)
    network = build_model("mobilenet_v2", 10, width=0.25)
    network.load_state_dict(load_checkpoint(path))
    stamp = path.stat().st_mtime_ns
    assert train_base("mobilenet_v2", data, recipe, tmp_path, width=0.25) == path
    assert path.stat().st_mtime_ns == stamp
    other = train_base("mobilenet_v2", data, recipe.model_copy(update={"seed": 1}), tmp_path, 0.25)
    assert other != path
    assert not same_weights(network, build_model("mobilenet_v2", 10, 0.25).eval())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, other.name])


def test_load_checkpoint_returns_a_state_dict(tmp_path):
    network = tiny_network()
    torch.save(network.state_dict(), tmp_path / "good.pt")
    loaded = load_checkpoint(tmp_path / "good.pt")
    assert loaded.keys() == network.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in network.state_dict().items())


def test_load_checkpoint_refuses_anything_else(tmp_path):
    torch.save(tiny_network(), tmp_path / "module.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    torch.save({"state_dict": tiny_network().state_dict(), "epoch": 3}, tmp_path / "training.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    expected = {
        "module.pt": r"^checkpoint \S+ is not a plain state dict .*torch.save\(model.state_dict\(\), path\)$",
        "list.pt": "is a list, not a state dict",
        "training.pt": "training checkpoint: save its 'state_dict' entry",
        "text.pt": "text.pt",
        "missing.pt": "does not exist",
    }
    for name, message in expected.items():
        with pytest.raises(DepthbenchError, match=message):
            load_checkpoint(tmp_path / name)


class _Exploit:
    """Unpickling this creates a file: what an unsafe torch.load would let a checkpoint do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"weight": torch.zeros(1), "payload": _Exploit(marker)}, tmp_path / "evil.pt")
    with pytest.raises(DepthbenchError, match="not a plain state dict"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
