"""Packaging: the wheel holds everything the suite reads, and an installed wheel runs on its own.

The slow test builds the wheel, installs it into a fresh virtualenv and runs the command line from
a directory outside the checkout. The virtualenv gets the running environment's dependencies
(torch and the rest) through a ``.pth`` file instead of installing them again (minutes and GBs).
The checkout is left off that path, and a path added by a ``.pth`` file is not itself scanned for
``.pth`` files, so the editable install of the checkout cannot leak in; the test checks that the
suite it runs is the wheel's.
"""

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TEST_PROFILES = Path(__file__).parent / "data" / "profiles"
# What building the wheel reads: pyproject.toml's packages, their folders, and the README.
BUILD_INPUTS = ("pyproject.toml", "README.md", "suite", "methods", "hardware_profiles", "configs")
# One cell that runs in seconds: the original network under the tests' fast profile.
ONE_CELL = {
    "name": "wheel",
    "model": {"name": "mobilenet_v2", "width": 0.25},
    "dataset": {"name": "digits", "resolution": 16},
    "base": {"train": {"steps": 2, "lr": 0.05, "batch_size": 16}},
    "methods": ["original"],
    "budgets": [0.9],
    "profiles": ["test-cpu-fast"],
    "finetune": {"steps": 1, "lr": 0.01, "batch_size": 8},
    "fidelity": "smoke",
}


def test_pyproject_lists_every_package_of_the_source_tree():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = setuptools["package-dir"]
    found = {
        ".".join(folder.relative_to(ROOT).parts)
        for top in ("suite", "methods")
        for folder in [ROOT / top, *(ROOT / top).rglob("*")]
        if folder.is_dir() and any(folder.glob("*.py"))
    }

    assert sorted(setuptools["packages"]) == sorted(found | set(mapped))
    assert mapped == {"suite.hardware_profiles": "hardware_profiles", "suite.configs": "configs"}
    for package, folder in mapped.items():
        assert (ROOT / folder / "__init__.py").is_file(), f"{package} must be a regular package"
        assert setuptools["package-data"][package] == ["*.yaml"]


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    shipped = [
        *(f"suite/hardware_profiles/{p.name}" for p in (ROOT / "hardware_profiles").glob("*.yaml")),
        *(f"suite/configs/{p.name}" for p in (ROOT / "configs").glob("*.yaml")),
        *(f"suite/reference/{p.name}" for p in (ROOT / "suite" / "reference").iterdir()),
    ]
    assert len(shipped) > 20 and set(shipped) <= names

    venv = make_venv(tmp_path / "venv")
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index"]
    subprocess.run([*pip, "--no-warn-script-location", wheel], check=True, capture_output=True)

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "profiles").mkdir()
    shutil.copy(TEST_PROFILES / "test-cpu-fast.yaml", outside / "profiles")
    environment = {
        **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "DEPTHBENCH_PROFILE_PATH": str(outside / "profiles"),
        "COLUMNS": "200",  # rich tables at full width, so names are not cut
    }

    def run(*command: str | Path) -> str:
        completed = subprocess.run(
            command, cwd=outside, env=environment, capture_output=True, text=True, timeout=600
        )
        assert completed.returncode == 0, f"{command} failed:\n{completed.stdout}{completed.stderr}"
        return completed.stdout

    where = run(
        venv / "bin" / "python",
        "-c",
        "import suite; from suite.run.config import DEFAULT_CONFIG, load_experiment; "
        "load_experiment(DEFAULT_CONFIG); print(suite.__file__); print(DEFAULT_CONFIG)",
    ).split()
    assert all(Path(path).is_relative_to(venv) for path in where), where

    depthbench = venv / "bin" / "depthbench"
    listed = run(depthbench, "profiles", "list")
    assert "cpu-onnxruntime" in listed and "rtx2080ti-replay-vgg19" in listed  # shipped
    assert "test-cpu-fast" in listed  # the user's folder on DEPTHBENCH_PROFILE_PATH

    measured = run(depthbench, "measure", "mobilenet_v2", "--width", "0.35", "--resolution", "32")
    assert "cpu-onnxruntime" in measured and "median" in measured

    (outside / "one-cell.yaml").write_text(yaml.safe_dump(ONE_CELL))
    run(depthbench, "run", "one-cell.yaml", "--results", "results")
    [cell] = (outside / "results").glob("wheel-*/cells/*.json")
    record = json.loads(cell.read_text())
    assert (record["method"], record["status"]) == ("original", "ok")
    assert record["code_version"] == "0.1.0"  # no checkout around it: the installed version
    assert (cell.parents[1] / "records.parquet").is_file()


def build_wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of the sources (a build in place would leave ``build/`` behind, whose
    stale files a later build could pick up)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy(ROOT / name, source / name)
    build = [sys.executable, "-m", "build", "--wheel", "--no-isolation"]  # no network needed
    subprocess.run([*build, "--outdir", tmp_path / "dist", source], check=True, capture_output=True)
    [wheel] = (tmp_path / "dist").glob("depthbench-*.whl")
    return wheel


def make_venv(venv: Path) -> Path:
    """A virtualenv that sees the running interpreter's packages through a ``.pth`` file: its
    import path without the checkout (site-packages, and what ``.pth`` files there added). The
    virtualenv's own site-packages comes first, so the wheel installed there wins."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    purelib = subprocess.run(
        [
            venv / "bin" / "python",
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # every entry but the checkout itself: a virtualenv inside the checkout (CI's .nox/shared)
    # still provides the dependencies
    running = [p for p in sys.path if p and Path(p).is_dir() and Path(p).resolve() != ROOT]
    (Path(purelib) / "running-environment.pth").write_text("".join(f"{p}\n" for p in running))
    return venv
