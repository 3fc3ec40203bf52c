"""The training device: `auto` and explicit devices, mixed precision only on CUDA, loader workers
that do not change the numbers, networks back on the CPU after training, and provenance in the
cell record. The CUDA test runs only where torch sees a GPU."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from pydantic import ValidationError
from torch import nn
from typer.testing import CliRunner

from suite.cli.app import app
from suite.core.models import build_model
from suite.errors import DepthbenchError
from suite.provenance import config_hash
from suite.run.config import load_experiment
from suite.run.data import load_data
from suite.run.executors import InProcessExecutor
from suite.run.grid import grid, run_experiment
from suite.run.train import (
    MAX_DEFAULT_WORKERS,
    Compute,
    FinetuneRecipe,
    evaluate,
    finetune,
    placed,
    resolve_device,
)

HAS_CUDA = torch.cuda.is_available()
PROFILES = Path(__file__).parent / "data" / "profiles"

# One cell: the original network, fine-tuned one step and measured.
ONE_CELL = {
    "model": {"name": "mobilenet_v2", "width": 0.25},
    "dataset": {"name": "digits", "resolution": 16},
    "base": {"train": {"steps": 2, "lr": 0.05, "batch_size": 16}},
    "methods": ["original"],
    "budgets": [0.9],
    "profiles": ["test-cpu-fast"],
    "finetune": {"steps": 1, "lr": 0.01, "batch_size": 8},
    "fidelity": "smoke",
}


@pytest.fixture(autouse=True)
def isolated(tmp_path_factory, monkeypatch):
    """Test profiles on the profile path; base networks and latency tables in a private cache."""
    monkeypatch.setenv("DEPTHBENCH_PROFILE_PATH", str(PROFILES))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def digits8():
    return load_data("digits", resolution=8)


def experiment(folder: Path, **changes):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "one.yaml"
    path.write_text(yaml.safe_dump({**ONE_CELL, **changes}))
    return load_experiment(path)


def image_folders(root: Path) -> Path:
    """A two-class ImageFolder tree of gradient JPEGs, so that every crop differs."""
    for label in ("cat", "dog"):
        for i in range(8):
            path = root / "train" / label / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (30, 1))
            Image.fromarray(np.stack([pixels, pixels * 0 + i * 20, pixels], axis=-1)).save(path)
        (root / "val" / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(root / "val" / label / "0.jpg")
    return root


def tiny_network() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


@pytest.mark.skipif(HAS_CUDA, reason="checks the machine without a GPU")
def test_auto_is_the_cpu_where_torch_sees_no_gpu(digits8):
    assert resolve_device("auto") == torch.device("cpu")
    recipe = placed(FinetuneRecipe(steps=1), Compute(), digits8)
    assert recipe.placement.record_fields() == {"train_device": "cpu", "amp": "off", "workers": 0}


def test_a_cells_record_says_where_it_trained(tmp_path):
    summary = run_experiment(experiment(tmp_path), tmp_path / "results", InProcessExecutor())
    records = pd.read_parquet(summary.records)

    assert list(records["status"]) == ["ok"]
    expected = f"cuda:0 ({torch.cuda.get_device_name(0)})" if HAS_CUDA else "cpu"
    assert list(records["train_device"]) == [expected]
    assert list(records["amp"]) == ["off"]
    assert list(records["workers"]) == [0]  # digits are in memory: no workers


@pytest.mark.skipif(HAS_CUDA, reason="checks the machine without a GPU")
def test_amp_without_cuda_is_refused_before_anything_is_stored(tmp_path, digits8):
    with pytest.raises(DepthbenchError, match=r"amp: true.*on cpu.*set amp: false"):
        placed(FinetuneRecipe(steps=1, amp=True), Compute(), digits8)
    asks_amp = experiment(tmp_path, finetune={**ONE_CELL["finetune"], "amp": True})
    with pytest.raises(DepthbenchError, match="amp needs a CUDA device"):
        run_experiment(asks_amp, tmp_path / "results", InProcessExecutor())
    assert not list((tmp_path / "results").glob("*/cells/*.json"))


def test_a_device_that_is_no_device_or_missing_is_refused_naming_the_input(tmp_path):
    with pytest.raises(ValidationError, match="'gpu' is not a device: use auto, cpu, cuda"):
        Compute(device="gpu")
    with pytest.raises(DepthbenchError, match=r"--device 'cuda:99': torch sees .* here"):
        resolve_device("cuda:99", "--device")
    with pytest.raises(DepthbenchError, match=r"compute.device.*'tpu' is not a device"):
        experiment(tmp_path, compute={"device": "tpu"})


@pytest.mark.parametrize("command", ["plan", "compress"])
def test_the_cli_refuses_a_bad_device_before_any_work(command):
    arguments = [command, "original", "mobilenet_v2", "--profile", "test-cpu-fast"]
    result = CliRunner().invoke(app, [*arguments, "--budget", "0.9", "--device", "gpu"])

    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert "--device 'gpu' is not a device: use auto, cpu, cuda, cuda:N or mps" in message
    assert "Traceback" not in result.output


def test_amp_off_and_the_compute_section_leave_every_hash_as_it_was(tmp_path):
    # the hash of this recipe before amp existed: CPU users' cells and caches keep their names
    assert config_hash(FinetuneRecipe(steps=3)) == (
        "5e632932dda29a26d3f5dab1d1ac865fc17640356af05608e356d3196d7a8b72"
    )
    assert config_hash(FinetuneRecipe(steps=3, amp=True)) != config_hash(FinetuneRecipe(steps=3))
    plain = grid(experiment(tmp_path / "a"))
    elsewhere = grid(experiment(tmp_path / "b", compute={"device": "cpu", "workers": 3}))
    amp = grid(experiment(tmp_path / "c", finetune={**ONE_CELL["finetune"], "amp": True}))
    assert [c.cell_hash for c in elsewhere] == [c.cell_hash for c in plain]
    assert {c.cell_hash for c in amp}.isdisjoint(c.cell_hash for c in plain)


def test_training_and_evaluation_leave_the_network_on_the_cpu_as_the_same_objects(digits8):
    recipe = placed(FinetuneRecipe(steps=3, lr=0.1, batch_size=32), Compute(), digits8)
    network = tiny_network()
    parameters = list(network.parameters())
    before = [p.detach().clone() for p in parameters]

    finetune(network, digits8, recipe, lr_scale={parameters[0]: 2.0})
    evaluate(network, digits8.test, placement=recipe.placement)

    assert all(a is b for a, b in zip(network.parameters(), parameters, strict=True))
    assert {p.device.type for p in network.parameters()} == {"cpu"}
    assert not torch.equal(parameters[0], before[0])  # it trained


def test_folder_data_default_to_workers_and_train_the_same_with_any_number(tmp_path):
    data = load_data("imagefolder", image_folders(tmp_path), resolution=16)
    recipe = FinetuneRecipe(steps=4, lr=0.1, batch_size=4)

    default = placed(recipe, Compute(), data).placement.workers
    assert default == min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1)

    def trained(workers: int) -> dict[str, torch.Tensor]:
        network = build_model("mobilenet_v2", data.num_classes, 0.25)
        network.load_state_dict(base)
        return finetune(network, data, placed(recipe, Compute(workers=workers), data)).state_dict()

    torch.manual_seed(0)
    base = build_model("mobilenet_v2", data.num_classes, 0.25).state_dict()
    alone, loaded_by_two = trained(0), trained(2)
    # each image's crop and flip follow its own seed, whichever process draws them
    assert all(torch.equal(alone[k], loaded_by_two[k]) for k in alone)
    assert not all(torch.equal(alone[k], base[k]) for k in alone)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU: torch.cuda.is_available() is False")
def test_on_cuda_a_cell_trains_in_mixed_precision_and_merges_on_the_cpu(tmp_path, digits8):
    recipe = placed(FinetuneRecipe(steps=3, lr=0.1, batch_size=32, amp=True), Compute(), digits8)
    assert recipe.placement.device == torch.device("cuda", torch.cuda.current_device())
    network = tiny_network()
    start = network[0].weight.detach().clone()
    finetune(network, digits8, recipe)
    assert {p.device.type for p in network.parameters()} == {"cpu"}
    assert not torch.equal(network[0].weight, start)
    on_gpu = evaluate(network, digits8.test, placement=recipe.placement)
    on_cpu = evaluate(network, digits8.test)
    assert on_gpu.top1 == pytest.approx(on_cpu.top1, abs=1.0)  # bf16 / fp16 rounding only

    run = experiment(tmp_path, finetune={**ONE_CELL["finetune"], "amp": True})
    records = pd.read_parquet(run_experiment(run, tmp_path / "r", InProcessExecutor()).records)
    assert list(records["status"]) == ["ok"], list(records["reason"])
    assert records["train_device"][0].startswith("cuda:0 (")
    assert records["amp"][0] in ("bfloat16", "float16")
