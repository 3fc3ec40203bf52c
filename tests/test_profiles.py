"""Hardware profiles: the shipped files, validation messages, hashing, search path, device match."""

import os
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from suite.cli.measure import register
from suite.core.chain import ConvSpec
from suite.core.export import write_conv_onnx
from suite.errors import DepthbenchError
from suite.measure.harness import measure
from suite.measure.profiles import (
    PROFILE_PATH_ENV,
    PROJECT_PROFILE_DIR,
    detect_machine,
    list_profiles,
    load_profile,
    read_profile,
)

SHIPPED = {
    "cpu-costmodel",
    "cpu-onnxruntime",
    "cpu-torch",
    "cuda-torch-fp32",
    "rtx2080ti-tensorrt-fp32-b128",
    "a100-tensorrt-fp16",
    "h100-tensorrt-fp16",
    "jetson-orin-tensorrt-fp16",
    "rtx2080ti-replay-mbv2-1.0",
    "rtx2080ti-replay-mbv2-1.4",
    "rtx2080ti-replay-vgg19",
}
TEST_PROFILE = Path(__file__).parent / "data" / "profiles" / "test-cpu-fast.yaml"


def write_profile(directory: Path, content: dict, name: str | None = None) -> Path:
    path = directory / f"{name or content['name']}.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


@pytest.fixture
def base() -> dict:
    """The cpu-onnxruntime file's content, to derive variants from."""
    return yaml.safe_load((PROJECT_PROFILE_DIR / "cpu-onnxruntime.yaml").read_text())


def test_every_shipped_profile_is_valid_and_named_after_its_file():
    profiles = {p.name: p for p in list_profiles()}

    assert SHIPPED <= set(profiles)
    assert len({p.hash for p in profiles.values()}) == len(profiles)
    upstream = profiles["rtx2080ti-tensorrt-fp32-b128"]
    assert (upstream.batch, upstream.resolution, upstream.precision) == (128, 224, "fp32")
    assert profiles["cpu-onnxruntime"].batch == 1
    assert profiles["cpu-onnxruntime"].resolution is None


def test_hash_follows_content_but_not_description(tmp_path, base):
    original = read_profile(write_profile(tmp_path, base))
    reworded = read_profile(write_profile(tmp_path, {**base, "description": "other words"}))
    rebatched = read_profile(write_profile(tmp_path, {**base, "batch": 8}))

    assert reworded.hash == original.hash
    assert rebatched.hash != original.hash


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"colour": "red"}, r"field 'colour': unknown field; allowed here: name, description"),
        ({"batch": 0}, r"field 'batch': Input should be greater than or equal to 1"),
        ({"batch": "many"}, r"field 'batch': Input should be a valid integer"),
        (
            {"backend": "openvino"},
            r"unknown backend 'openvino'; allowed: costmodel, onnxruntime, .*replay",
        ),
        ({"precision": "fp16"}, r"precision fp16 needs a GPU backend"),
        (
            {"torch": {"device": "cpu", "mode": "eager", "threads": 1}},
            r"section 'torch' does not apply",
        ),
        ({"device": {"cpu_model": "(unclosed"}}, r"field 'device.cpu_model': not a valid regular"),
        ({"device": None}, r"a measuring profile needs 'device'"),
    ],
)
def test_invalid_profiles_name_file_field_and_fix(tmp_path, base, change, expected):
    path = write_profile(tmp_path, {**base, **change})

    with pytest.raises(DepthbenchError, match=expected) as error:
        read_profile(path)
    assert str(path) in str(error.value)


def test_unknown_nested_field_lists_the_allowed_ones(tmp_path, base):
    base["onnxruntime"]["threads"] = 4
    with pytest.raises(
        DepthbenchError,
        match="'onnxruntime.threads': unknown field; allowed here: "
        "intra_op_threads, affinity, allow_spinning, graph_optimization_level",
    ):
        read_profile(write_profile(tmp_path, base))


def test_affinity_needs_one_group_per_worker_thread(tmp_path, base):
    base["onnxruntime"].update(intra_op_threads=3, affinity="1")
    with pytest.raises(DepthbenchError, match="intra_op_threads - 1 = 2"):
        read_profile(write_profile(tmp_path, base))


def test_name_must_match_the_file_name(tmp_path, base):
    with pytest.raises(DepthbenchError, match="must equal the file name 'renamed'"):
        read_profile(write_profile(tmp_path, base, name="renamed"))


def test_yaml_errors_and_non_mappings_name_the_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    listed = tmp_path / "listed.yaml"
    listed.write_text("- a\n- b\n")

    with pytest.raises(DepthbenchError, match=f"{broken}: not valid YAML"):
        read_profile(broken)
    with pytest.raises(
        DepthbenchError, match=f"{listed}: expected a mapping of fields \\(name, .*\\), found list"
    ):
        read_profile(listed)


def test_replay_profiles_have_no_device_and_need_an_existing_table(tmp_path):
    replay = load_profile("rtx2080ti-replay-vgg19")
    content = replay.model_dump(mode="json")
    content["replay"]["table"] = "missing.csv"

    assert replay.is_replay and not replay.matches("AMD EPYC", ["NVIDIA GeForce RTX 2080 Ti"])
    with pytest.raises(
        DepthbenchError, match="no table 'missing.csv' in suite/reference; available: ecdc"
    ):
        read_profile(write_profile(tmp_path, content))


def test_a_dropped_in_profile_works_without_code_changes(tmp_path, monkeypatch):
    content = yaml.safe_load(TEST_PROFILE.read_text())
    content["name"] = "my-laptop"
    write_profile(tmp_path, content)
    monkeypatch.setenv(PROFILE_PATH_ENV, str(tmp_path))

    profile = load_profile("my-laptop")
    model = write_conv_onnx(ConvSpec(3, 4, 3, 1, 1, 1), (2, 3, 16, 16), "relu", tmp_path / "m.onnx")
    result = measure(model, profile)

    assert "my-laptop" in {p.name for p in list_profiles()}
    assert result.profile_hash == profile.hash
    assert result.n == 2 * 5


def test_the_same_name_twice_on_the_search_path_is_an_error(tmp_path, monkeypatch, base):
    write_profile(tmp_path, base)
    monkeypatch.setenv(PROFILE_PATH_ENV, str(tmp_path))

    with pytest.raises(DepthbenchError, match="'cpu-onnxruntime' is defined twice"):
        load_profile("cpu-onnxruntime")


def test_unknown_profile_lists_the_available_ones():
    with pytest.raises(
        DepthbenchError, match="unknown profile 'nope'; available: .*cpu-onnxruntime"
    ):
        load_profile("nope")


def test_device_rules_match_cpu_and_gpu_names():
    cpu = load_profile("cpu-onnxruntime")
    a100 = load_profile("a100-tensorrt-fp16")
    orin = load_profile("jetson-orin-tensorrt-fp16")

    assert cpu.matches("Intel(R) Xeon(R) Gold 6248", [])
    assert a100.matches("AMD EPYC 7742", ["NVIDIA A100-SXM4-40GB"])
    assert not a100.matches("AMD EPYC 7742", ["NVIDIA H100 80GB HBM3"])
    assert orin.matches("ARMv8 Processor rev 1 (v8l)", ["NVIDIA Jetson AGX Orin Developer Kit"])


def test_this_machine_is_detected():
    machine = detect_machine()

    assert machine.cpu_cores == os.cpu_count()
    assert machine.cpu_model
    assert load_profile("cpu-onnxruntime").matches(machine.cpu_model, machine.gpu_names)


def test_cli_validate_reports_each_file_and_fails_on_any_invalid_one(tmp_path, base):
    app = typer.Typer()
    register(app)
    bad = write_profile(tmp_path, {**base, "batch": 0}, name="cpu-onnxruntime")

    result = CliRunner().invoke(app, ["profiles", "validate", str(bad), str(TEST_PROFILE)])

    assert result.exit_code == 1
    assert "ok" in result.output and "test-cpu-fast" in result.output
    assert "invalid" in result.output and "field 'batch'" in result.output
