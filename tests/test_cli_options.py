"""The command line as a whole: start-up cost, shared options, and bad input caught before work.

Each command's own behaviour is tested with its step (test_cli, test_dp_method, test_harness,
test_profiles, test_report, test_runner); here are the rules every command follows.
"""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from suite.cli import methods as cli_methods
from suite.cli.app import app, main_options
from suite.console import logger
from suite.core.trace import trace_model
from suite.errors import DepthbenchError
from suite.measure.profiles import load_profile
from suite.measure.tables import build_table
from suite.run.config import DEFAULT_CONFIG
from suite.run.train import FinetuneRecipe

HEAVY = ("torch", "torchvision", "pandas", "seaborn", "matplotlib", "sklearn", "onnx")


def invoke(*arguments: str):
    return CliRunner().invoke(app, list(arguments))


def text(result) -> str:
    return " ".join(result.output.split())  # rich's wrapping undone


@pytest.mark.parametrize("arguments", [["--help"], ["profiles", "list"], ["plan", "--help"]])
def test_help_and_light_commands_import_no_heavy_library(arguments):
    """A test on imports, not on time: torch and friends load only in the commands that use them."""
    script = (
        "import sys\n"
        "from suite.cli.app import main\n"
        f"sys.argv = ['depthbench', *{arguments!r}]\n"
        "try:\n    main()\nexcept SystemExit as end:\n    assert not end.code, end.code\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {set(HEAVY)!r}))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True,
        cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert completed.stdout.strip().splitlines()[-1] == "[]", completed.stdout


SHARED = {"--width", "--resolution", "--num-classes", "--profile", "--budget", "--budget-kind",
          "--seed", "--data", "--data-root", "--checkpoint", "--fidelity"}  # fmt: skip


def options_of(command) -> dict[str, str | None]:
    return {
        name: param.help
        for param in command.params
        if param.param_type_name == "option"
        for name in param.opts
        if name in SHARED
    }


def test_a_shared_option_is_the_same_in_every_command():
    root = typer.main.get_command(app)
    commands = {name: root.commands[name] for name in ("inspect", "merge", "measure", "table",
                                                      "plan", "compress")}  # fmt: skip
    helps: dict[str, set] = {}
    for command in commands.values():
        for option, help_text in options_of(command).items():
            helps.setdefault(option, set()).add(help_text)
    # --resolution means two things: the network's input size, and the data's (plan, compress)
    assert {option: len(texts) for option, texts in helps.items()} == {
        option: 2 if option == "--resolution" else 1 for option in helps
    }
    assert options_of(commands["plan"]) == options_of(commands["compress"])
    assert set(options_of(commands["plan"])) == SHARED - {"--num-classes"}
    width = {options_of(command)["--width"] for command in commands.values()}
    assert width == {"MobileNetV2 width multiplier."}


def test_plan_and_compress_read_the_base_recipe_from_the_default_config():
    written = yaml.safe_load(DEFAULT_CONFIG.read_text())["base"]["train"]

    assert cli_methods._base_recipe() == FinetuneRecipe(**written)
    assert not hasattr(cli_methods, "BASE_RECIPE")


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("command", ["plan", "compress"])
@pytest.mark.parametrize(
    "arguments, message",
    [
        (["no-such-method", "--budget", "0.7"], "unknown method 'no-such-method': registered"),
        (["dp-depth", "--budget", "-0.5"], "--budget -0.5 is not a budget: give a positive finite"),
        (["dp-depth", "--budget", "0"], "--budget 0 is not a budget"),
        (["dp-depth", "--budget", "nan"], "--budget nan is not a budget"),
        (["dp-depth", "--budget", "0.7", "--resolution", "0"], "--resolution 0 is not a resol"),
    ],
)
def test_bad_method_or_budget_is_refused_before_any_work(empty_cache, command, arguments, message):
    method, *options = arguments
    result = invoke(command, method, "mobilenet_v2", "-p", "cpu-onnxruntime", *options)

    assert result.exit_code == 1, result.output
    assert message in text(result)
    assert "Traceback" not in result.output and "ValidationError" not in result.output
    assert not empty_cache.exists()  # no base network was trained, no table measured


@pytest.mark.parametrize(
    "arguments",
    [
        ["inspect", "mobilenet_v2", "--resolution", "0"],
        ["inspect", "mobilenet_v2", "--resolution", "-32"],
        ["measure", "mobilenet_v2", "--resolution", "0"],
        ["measure", "mobilenet_v2", "--resolution", "-32"],
        ["table", "mobilenet_v2", "--resolution", "0"],
    ],
)
def test_a_resolution_that_is_not_positive_is_refused(arguments):
    result = invoke(*arguments)

    assert result.exit_code == 1, result.output
    assert f"--resolution {arguments[-1]} is not a resolution: give a positive" in text(result)


def test_merge_into_a_missing_folder_is_refused(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"activations": [], "boundaries": list(range(1, 51))}))
    out = tmp_path / "missing" / "merged.onnx"

    result = invoke("merge", "mobilenet_v2", "--plan", str(plan), "--out", str(out))

    assert result.exit_code == 1, result.output
    assert f"the folder {out.parent} does not exist" in text(result)


def test_a_replay_profile_refuses_another_width():
    result = invoke("table", "mobilenet_v2", "--width", "0.5", "-p", "rtx2080ti-replay-mbv2-1.0")

    assert result.exit_code == 1, result.output
    assert (
        "replays latencies measured on mobilenet_v2-1 (width 1), but the chain is "
        "'mobilenet_v2-0.5'" in text(result)
    )
    assert "Use width 1 (--width 1)" in text(result)
    wide = trace_model("mobilenet_v2", width=1.4, resolution=224).chain
    with pytest.raises(
        DepthbenchError, match="measured on mobilenet_v2-1 .* is 'mobilenet_v2-1.4'"
    ):
        build_table(wide, load_profile("rtx2080ti-replay-mbv2-1.0"))
    assert len(build_table(wide, load_profile("rtx2080ti-replay-mbv2-1.4")).latency_ms) == 171


@pytest.fixture
def talkative():
    """The depthbench app's options on an app whose command logs at every level and warns."""
    test_app = typer.Typer()
    test_app.callback()(main_options)

    @test_app.command()
    def talk() -> None:
        logger.debug("debug detail")
        logger.info("progress line")
        warnings.warn("the cache is corrupt", UserWarning, stacklevel=1)

    return lambda *arguments: CliRunner().invoke(test_app, [*arguments, "talk"])


def test_warnings_are_logged_as_category_and_message(talkative):
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        result = talkative()

    assert result.exit_code == 0, result.output
    [line] = [line for line in result.output.splitlines() if "corrupt" in line]
    assert line.endswith("WARNING UserWarning: the cache is corrupt")
    assert "test_cli_options.py" not in result.output and "warnings.warn" not in result.output
    assert "progress line" in result.output and "debug detail" not in result.output


@pytest.mark.parametrize(
    "option, shown, hidden",
    [
        ("--quiet", ["UserWarning: the cache is corrupt"], ["progress line", "debug detail"]),
        ("-q", ["UserWarning: the cache is corrupt"], ["progress line", "debug detail"]),
        ("--verbose", ["debug detail", "progress line", "UserWarning"], []),
        ("-v", ["debug detail", "progress line", "UserWarning"], []),
    ],
)
def test_quiet_and_verbose(talkative, option, shown, hidden):
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        result = talkative(option)

    assert result.exit_code == 0, result.output
    assert all(line in result.output for line in shown), result.output
    assert not any(line in result.output for line in hidden), result.output


def test_quiet_and_verbose_together_are_refused(talkative):
    result = talkative("-q", "-v")
    assert result.exit_code == 1
    assert "give --quiet or --verbose, not both" in text(result)
