"""The foundation commands of the CLI, ``inspect``, ``merge`` and ``list-methods``, run as a user runs them."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime
import pytest
import torch
from typer.testing import CliRunner

from suite.cli.app import app
from suite.core.plan import Plan
from suite.core.realize import deploy_network, trainable_network
from suite.core.trace import trace_model


def invoke(*arguments: str):
    return CliRunner().invoke(app, list(arguments))


def text(result) -> str:
    """The output with rich's line wrapping undone, so that messages can be matched whole."""
    return " ".join(result.output.split())


def test_inspect_counts_the_valid_segments_under_both_rules():
    result = invoke("inspect", "mobilenet_v2")
    assert result.exit_code == 0, result.output
    assert "L = 50" in result.output
    assert "valid segments under the upstream rule: 171" in result.output
    assert "valid segments under the general rule: 515" in result.output
    assert "stride boundaries (upstream rule): [5, 11, 20, 41]" in result.output


def test_merge_writes_an_onnx_file_that_computes_the_deploy_network(tmp_path):
    """A plan that merges whole blocks: the ONNX file must compute what the merged network does."""
    options = ("--width", "0.35", "--resolution", "32", "--num-classes", "10")
    traced = trace_model("mobilenet_v2", width=0.35, num_classes=10, resolution=32)
    boundaries = {5, 8, 11, 14, 17, 20, *range(21, 51)}
    plan = Plan(frozenset(boundaries - {8, 14}), frozenset(boundaries))
    plan.save(tmp_path / "plan.json")

    torch.manual_seed(0)  # the CLI builds the same randomly initialised network
    result = invoke("merge", "mobilenet_v2", *options, "--plan", str(tmp_path / "plan.json"),
                    "--out", str(tmp_path / "merged.onnx"))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"{len(plan.groups(traced.chain))} merged convs" in result.output

    torch.manual_seed(0)
    traced = trace_model("mobilenet_v2", width=0.35, num_classes=10, resolution=32)
    with torch.no_grad():
        deploy = deploy_network(trainable_network(traced, plan)).eval()
        x = torch.randn(1, 3, 32, 32)
        expected = deploy(x).numpy()
    session = onnxruntime.InferenceSession(str(tmp_path / "merged.onnx"))
    (output,) = session.run(None, {"input": x.numpy()})
    assert np.abs(output - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (("inspect", "mobilenet_v3"), "unknown model 'mobilenet_v3'"),
        (("inspect", "mobilenet_v2", "--width", "-1"), "width must be positive"),
    ],
)
def test_bad_model_arguments_give_one_message_and_exit_1(arguments, message):
    result = invoke(*arguments)
    assert result.exit_code == 1
    assert message in text(result)
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        (json.dumps({"activations": [3], "boundaries": [5]}), "activation at position 3"),
        (json.dumps({"activations": [], "boundaries": [6]}), "residual rule"),
    ],
)
def test_malformed_plans_give_one_message_and_exit_1(tmp_path, content, message):
    (tmp_path / "plan.json").write_text(content)
    out = tmp_path / "merged.onnx"
    result = invoke("merge", "mobilenet_v2", "--resolution", "32", "--plan",
                    str(tmp_path / "plan.json"), "--out", str(out))  # fmt: skip
    assert result.exit_code == 1
    assert message in text(result)
    assert not out.exists()


def test_an_unreadable_plan_file_is_named(tmp_path):
    result = invoke("merge", "mobilenet_v2", "--plan", str(tmp_path / "missing.json"),
                    "--out", str(tmp_path / "m.onnx"))  # fmt: skip
    assert result.exit_code == 1
    assert "missing.json" in text(result)


def test_list_methods_shows_every_in_tree_method():
    result = invoke("list-methods")
    assert result.exit_code == 0, result.output
    for name in ("original", "dp-depth", "layerprune", "deeprebirth", "relu-reduction",
                 "depthshrinker"):  # fmt: skip
        assert name in result.output
