"""Everyday command-line conventions: --version, machine-readable output, measurement overrides,
env, profile templates, the cache, method configs, run selection, artefacts and CI compare.

Each is tested through the CLI (typer's CliRunner) against something computed independently: the
store's own records, a profile file written by hand, the library functions the command wraps.
"""

import csv
import io
import json

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from suite.cli.app import app
from suite.measure.profiles import PROJECT_PROFILE_DIR, load_profile, read_profile
from suite.run.store import ResultsStore
from tests.test_report import realistic_run


def code_version() -> str:
    """What records carry."""
    from suite.provenance import code_version as version

    return version()


def invoke(*arguments: str, env: dict | None = None):
    return CliRunner().invoke(app, list(arguments), env={"COLUMNS": "200", **(env or {})})


def text(result) -> str:
    return " ".join(result.output.split())


def stdout_of(result) -> str:
    """What the command wrote to stdout alone: JSON and CSV must parse without stderr's lines."""
    return result.stdout


# 1. --version


def test_version_shows_the_package_and_the_code_version_records_carry():
    result = invoke("--version")

    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["depthbench 0.1.0", f"code version {code_version()}"]


# 2. machine-readable output


def test_profiles_list_as_json_and_csv_holds_every_profile_with_its_hash():
    expected = {profile.name: profile.hash for profile in map(read_profile, _project_profiles())}

    as_json = json.loads(stdout_of(invoke("profiles", "list", "--format", "json")))
    as_csv = list(csv.DictReader(io.StringIO(stdout_of(invoke("profiles", "list", "-f", "csv")))))

    assert {row["name"]: row["hash"] for row in as_json} == expected
    assert {row["name"]: row["hash"] for row in as_csv} == expected
    replay = next(row for row in as_json if row["name"] == "rtx2080ti-replay-mbv2-1.0")
    assert replay["resolution"] == 224 and replay["backend"] == "replay"


def _project_profiles():
    return sorted(PROJECT_PROFILE_DIR.glob("*.yaml"))


def test_list_methods_as_json():
    rows = json.loads(stdout_of(invoke("list-methods", "--format", "json")))

    by_name = {row["name"]: row for row in rows}
    assert {"original", "dp-depth", "layerprune", "deeprebirth"} <= set(by_name)
    assert by_name["dp-depth"]["aliases"] == ["kim2023"]
    assert "ICML 2023" in by_name["dp-depth"]["paper"]


# --warmup-s 0 and few iterations: the numbers are rough, the bookkeeping is what is tested
QUICK = ["--warmup-s", "0", "--min-iterations", "5", "--min-seconds", "0", "--repeats", "2"]
SMALL = ["mobilenet_v2", "--width", "0.5", "--resolution", "32"]


def test_measure_as_json_with_overrides_records_the_derived_profile(tmp_path):
    results_file = tmp_path / "result.json"

    result = invoke("measure", *SMALL, *QUICK, "--batch", "2", "--threads", "1",
                    "--format", "json", "--results-file", str(results_file))  # fmt: skip

    assert result.exit_code == 0, result.output
    record = json.loads(stdout_of(result))
    assert json.loads(results_file.read_text()) == record
    # the derived profile is the one a hand-written profile file with these fields gives
    content = yaml.safe_load((PROJECT_PROFILE_DIR / "cpu-onnxruntime.yaml").read_text())
    content["batch"] = 2
    for protocol in ("protocol", "table_protocol"):
        content[protocol] |= {"warmup_s": 0, "min_iterations": 5, "min_seconds": 0, "repeats": 2}
    (tmp_path / "cpu-onnxruntime.yaml").write_text(yaml.safe_dump(content))
    by_hand = read_profile(tmp_path / "cpu-onnxruntime.yaml")
    assert record["profile_hash"] == by_hand.hash != load_profile("cpu-onnxruntime").hash
    assert record["environment"]["profile_hash"] == by_hand.hash
    assert record["batch"] == 2 and record["latency_repeats"] == 2
    assert record["throughput_per_s"] == pytest.approx(2000 / record["latency_ms_median"])
    assert (
        record["throughput_per_s_ci_low"]
        <= record["throughput_per_s"]
        <= record["throughput_per_s_ci_high"]
    )


def test_measure_table_shows_throughput_beside_latency():
    result = invoke("measure", *SMALL, *QUICK, "--batch", "3")

    assert result.exit_code == 0, result.output
    assert "samples/s (95% CI" in result.output and "batch 3)" in result.output


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["measure", *SMALL, "--batch", "0"], "with batch=0 is not valid: batch: Input should be"),
        (["measure", *SMALL, "--repeats", "0"], "protocol.repeats: Input should be greater"),
        (["table", "mobilenet_v2", "-p", "rtx2080ti-replay-mbv2-1.0", "--repeats", "3"],
         "replays a table and measures nothing: drop --repeats"),
        (["measure", *SMALL, "-p", "a100-tensorrt-fp16", "--threads", "2"],
         "--threads does not apply to backend 'tensorrt'"),
    ],
)  # fmt: skip
def test_bad_overrides_are_refused_with_one_message(arguments, message):
    result = invoke(*arguments)

    assert result.exit_code == 1, result.output
    assert message in text(result)
    assert "Traceback" not in result.output


def test_measure_refuses_to_overwrite_a_results_file(tmp_path):
    (tmp_path / "result.json").write_text("{}")

    result = invoke("measure", *SMALL, "--results-file", str(tmp_path / "result.json"))

    assert result.exit_code == 1
    assert "result.json exists; remove it or choose another path" in text(result)
    assert (tmp_path / "result.json").read_text() == "{}"


# compare in CI


@pytest.fixture
def two_runs(tmp_path):
    """run-b: one cell 30% slower, one 3% slower, one 20% faster, one missing; both far beyond
    the CIs."""
    store = ResultsStore(tmp_path)
    run_a = realistic_run(run_id="run-a")
    changes = {("dp_depth", 0.8): 1.3, ("dp_depth", 0.9): 1.03, ("layerprune", 0.8): 0.8}
    for record in run_a:
        store.write(record)
        key = (record.method, record.budget.value)
        if key == ("depthshrinker", 0.6):
            continue
        ratio = changes.get(key, 1.0)
        update = {"run_id": "run-b"}
        if record.latency_ms_median is not None:
            update |= {
                name: getattr(record, name) * ratio
                for name in ("latency_ms_median", "latency_ms_ci_low", "latency_ms_ci_high")
            }
            if ratio != 1.0:  # a tight interval, so that 3% is beyond the noise
                update |= {
                    "latency_ms_ci_low": update["latency_ms_median"] * 0.999,
                    "latency_ms_ci_high": update["latency_ms_median"] * 1.001,
                }
        store.write(record.model_copy(update=update))
    return tmp_path / "run-a", tmp_path / "run-b"


def _change_of(rows, method, budget):
    [row] = [r for r in rows if r["method"] == method and r["budget_value"] == budget]
    return row


def test_compare_as_json_has_ratio_percent_and_change(two_runs):
    result = invoke("compare", *map(str, two_runs), "--format", "json")

    assert result.exit_code == 0, result.output
    rows = json.loads(stdout_of(result))
    slower = _change_of(rows, "dp_depth", 0.8)
    assert slower["latency_ratio"] == pytest.approx(1.3)
    assert slower["latency_change_pct"] == pytest.approx(30)
    assert slower["change"] == "slower"
    assert _change_of(rows, "dp_depth", 0.9)["change"] == "slower"
    assert _change_of(rows, "layerprune", 0.8)["change"] == "faster"
    assert _change_of(rows, "depthshrinker", 0.6)["change"] == "missing in B"


def test_compare_factor_ignores_small_changes_and_only_changed_hides_the_rest(two_runs):
    result = invoke("compare", *map(str, two_runs), "--factor", "1.1", "--only-changed", "-f",
                    "json")  # fmt: skip

    rows = json.loads(stdout_of(result))
    changes = {(row["method"], row["budget_value"]): row["change"] for row in rows}
    assert ("dp_depth", 0.9) not in changes  # 3% < 10%
    assert changes[("dp_depth", 0.8)] == "slower"
    assert changes[("layerprune", 0.8)] == "faster"  # 1 / 0.8 = 1.25 >= 1.1
    assert all(changes.values())


def test_compare_fails_on_regression_only_when_asked(two_runs):
    assert invoke("compare", *map(str, two_runs)).exit_code == 0

    result = invoke("compare", *map(str, two_runs), "--fail-on-regression")

    assert result.exit_code == 1
    assert "error: 3 regressions" in text(result)  # two slower, one missing
    reverse = invoke("compare", *map(str, reversed(two_runs)), "--fail-on-regression",
                     "--factor", "1.2")  # fmt: skip
    # against B, A is 20%+ faster on dp_depth 0.8, but layerprune 0.8 is 25% slower and the
    # depthshrinker cell is new (not a regression)
    assert reverse.exit_code == 1 and "error: 1 regressions" in text(reverse)


# export


def test_export_writes_every_column_with_the_json_columns_flattened(tmp_path):
    nested = {
        "method_config": {"alpha": 1.6, "solver": "upstream"},
        "plan": {"activations": [1, 5], "meta": {"objective": 2.5}},
        "environment": {"cpu_model": "Test CPU", "cpu_cores": 2},
    }
    records = [record.model_copy(update=nested) for record in realistic_run(run_id="run-a")]
    store = ResultsStore(tmp_path / "results")
    for record in records:
        store.write(record)
    out = tmp_path / "records.csv"

    result = invoke("export", str(tmp_path / "results" / "run-a"), "--out", str(out))

    assert result.exit_code == 0, result.output
    exported = pd.read_csv(out).set_index("cell_hash")
    assert len(exported) == len(records)
    stored = store.records("run-a")
    plain = set(stored.columns) - set(nested)
    flattened = {"method_config.alpha", "method_config.solver", "plan.activations",
                 "plan.meta.objective", "environment.cpu_model", "environment.cpu_cores"}  # fmt: skip
    assert set(exported.columns) | {"cell_hash"} == plain | flattened
    for record in records:
        row = exported.loc[record.cell_hash]
        assert row["method"] == record.method and row["status"] == record.status
        if record.latency_ms_median is not None:
            assert row["latency_ms_median"] == pytest.approx(record.latency_ms_median)
        assert row["plan.meta.objective"] == 2.5 and row["environment.cpu_model"] == "Test CPU"
        assert json.loads(row["plan.activations"]) == [1, 5]
    assert invoke("export", str(tmp_path / "results" / "run-a"), "--out", str(out)).exit_code == 1


# env and cache


def test_env_as_json_reports_what_results_record(tmp_path):
    from suite.cli.env import cache_paths
    from suite.measure.harness import capture_environment

    (tmp_path / "depthbench" / "importance").mkdir(parents=True)
    (tmp_path / "depthbench" / "importance" / "entry.json").write_bytes(b"x" * 1000)

    result = invoke("env", "--format", "json", env={"XDG_CACHE_HOME": str(tmp_path)})

    assert result.exit_code == 0, result.output
    report = json.loads(stdout_of(result))
    captured = capture_environment(load_profile("cpu-onnxruntime"))
    assert report["torch"] == captured["torch"] and report["cpu_model"] == captured["cpu_model"]
    assert report["tensorrt"] == (captured["tensorrt"] or "not installed")
    assert report["code_version"] == code_version()
    assert report["caches"] == {
        "base": 0,
        "tables": 0,
        "importance": 1000,
        "tensorrt": report["caches"]["tensorrt"],
    }  # the TensorRT cache is under ~/.cache whatever XDG says
    assert set(cache_paths()) == {"base", "tables", "importance", "tensorrt"}
    assert len(report["load_average"]) == 3
    assert report["installed"].startswith(("editable", "installed", "not installed"))


@pytest.mark.parametrize(
    "load, cores, busy", [(1.9, 2, False), (2.0, 2, True), (7.5, 8, False), (9.0, 8, True)]
)
def test_env_warns_when_the_load_reaches_the_core_count(load, cores, busy):
    from suite.cli.env import busy_warning

    warning = busy_warning(load, cores)
    assert (warning is not None) == busy
    if busy:
        assert f"{cores} cores: this machine is too busy to measure" in warning


def test_cache_info_and_clear_one_kind(tmp_path):
    cache = tmp_path / "depthbench"
    (cache / "base").mkdir(parents=True)
    (cache / "base" / "base-resnet18.pt").write_bytes(b"w" * 2048)
    (cache / "latency_tables.sqlite").write_bytes(b"t" * 100)
    env = {"XDG_CACHE_HOME": str(tmp_path)}

    rows = json.loads(stdout_of(invoke("cache", "info", "-f", "json", env=env)))
    sizes = {row["cache"]: row["bytes"] for row in rows}
    assert sizes["base"] == 2048 and sizes["tables"] == 100 and sizes["importance"] == 0

    result = invoke("cache", "clear", "--what", "tables", env=env)

    assert result.exit_code == 0, result.output
    assert "cleared tables: 100 B" in result.output
    assert not (cache / "latency_tables.sqlite").exists()
    assert (cache / "base" / "base-resnet18.pt").exists()  # the other kinds are kept


# profiles new


def test_profiles_new_writes_a_commented_valid_copy_and_never_overwrites(tmp_path):
    env = {"DEPTHBENCH_PROFILE_PATH": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}

    result = invoke("profiles", "new", "my-cpu", "--from", "cpu-onnxruntime", env=env)

    assert result.exit_code == 0, result.output
    written = tmp_path / "my-cpu.yaml"
    profile = read_profile(written)
    origin = load_profile("cpu-onnxruntime")
    text_written = written.read_text()
    assert "# One intra-op thread" in text_written  # the source's comments are kept
    assert f"from cpu-onnxruntime (hash {origin.hash})" in text_written
    assert profile.model_dump(exclude={"name", "description"}) == origin.model_dump(
        exclude={"name", "description"}
    )
    listed = json.loads(stdout_of(invoke("profiles", "list", "-f", "json", env=env)))
    assert "my-cpu" in {row["name"] for row in listed}

    written.write_text(text_written + "# my edit\n")
    again = invoke("profiles", "new", "my-cpu", env=env)
    assert again.exit_code == 1 and "my-cpu.yaml exists; edit it" in text(again)
    assert written.read_text().endswith("# my edit\n")


def test_profiles_new_goes_to_the_user_folder_without_a_profile_path(tmp_path, monkeypatch):
    monkeypatch.delenv("DEPTHBENCH_PROFILE_PATH", raising=False)
    env = {"XDG_CONFIG_HOME": str(tmp_path)}

    result = invoke("profiles", "new", "gpu-copy", "--from", "h100-tensorrt-fp16", env=env)

    assert result.exit_code == 0, result.output
    assert read_profile(tmp_path / "depthbench" / "profiles" / "gpu-copy.yaml").batch == 128
    bad = invoke("profiles", "new", "Bad_Name", env=env)
    assert bad.exit_code == 1 and "cannot make profile 'Bad_Name': name: String" in text(bad)


# methods show, --config, --config-file


def test_methods_show_lists_every_config_field_with_its_default():
    from suite.core.registry import get_method

    result = invoke("methods", "show", "kim2023", "--format", "json")

    assert result.exit_code == 0, result.output
    shown = json.loads(stdout_of(result))
    spec = get_method("dp-depth")
    defaults = spec.make_config().model_dump(mode="json")
    assert shown["name"] == "dp-depth" and shown["paper"] == spec.paper
    assert {row["field"]: row["default"] for row in shown["fields"]} == defaults
    assert shown["schema"] == spec.config.model_json_schema()
    assert "normalisation α" in invoke("methods", "show", "dp-depth").output


def test_config_values_and_file_reach_the_method_config(tmp_path):
    from suite.cli.methods import CellOptions, _checked

    config_file = tmp_path / "dp.yaml"
    config_file.write_text("alpha: 1.4\nsolver: exact\nprec: 5\n")
    cell = CellOptions(
        "dp-depth", "resnet18", "cpu-onnxruntime", 0.7,
        config=["alpha=1.2", "prec=null", "add_block_end_activations=false"],
        config_file=config_file,
    )  # fmt: skip

    _, config, _ = _checked(cell)

    assert config.alpha == 1.2  # the command line wins over the file
    assert config.solver == "exact" and config.prec is None
    assert config.add_block_end_activations is False


@pytest.mark.parametrize(
    "options, message",
    [
        (["--config", "alpha"], "--config 'alpha': give key=value, e.g. --config alpha=1.2"),
        (["--config", "alpha=abc"], "invalid config for method 'dp-depth'"),
        (["--config", "no_such=1"], "no_such"),
        (["--config-file", "missing.yaml"], "--config-file missing.yaml does not exist"),
    ],
)
def test_bad_method_config_is_refused_before_any_work(tmp_path, options, message):
    result = invoke("plan", "dp-depth", "mobilenet_v2", "-p", "cpu-onnxruntime", "--budget", "0.7",
                    *options,
                    env={"XDG_CACHE_HOME": str(tmp_path / "cache")})  # fmt: skip

    assert result.exit_code == 1, result.output
    assert message in text(result)
    assert not (tmp_path / "cache").exists()  # no base network trained


def test_plan_as_json_is_the_plan_file_content(tmp_path):
    import torch

    from suite.core.models import build_model
    from suite.core.plan import Plan

    checkpoint = tmp_path / "resnet18.pt"
    torch.save(build_model("resnet18", 10).state_dict(), checkpoint)
    out = tmp_path / "plan.json"

    result = invoke("plan", "original", "resnet18", "--checkpoint", str(checkpoint),
                    "--resolution", "16", "-p", "cpu-onnxruntime", "--budget", "1", "--out",
                    str(out), "-f", "json",
                    env={"XDG_CACHE_HOME": str(tmp_path / "cache")})  # fmt: skip

    assert result.exit_code == 0, result.output
    printed = json.loads(stdout_of(result))
    assert Plan.from_json(printed) == Plan.load(out)
    assert printed["profile_hash"] == load_profile("cpu-onnxruntime").hash


# runs: selection, dry run, retry, list, summary


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """test_runner's three-cell experiment (one cell fails: a table budget depthshrinker does not
    plan in), with its test profiles and a private cache."""
    from tests.test_runner import PROFILES, TINY, write_experiment

    monkeypatch.setenv("DEPTHBENCH_PROFILE_PATH", str(PROFILES))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return write_experiment(tmp_path, TINY), tmp_path / "results"


def test_selection_fills_the_full_experiments_run_and_dry_run_shows_it(tiny):
    from suite.run.config import load_experiment
    from suite.run.grid import default_run_id, grid

    config, results = tiny
    full = load_experiment(config)
    run_id = default_run_id(full, grid(full))

    result = invoke("run", str(config), "--results", str(results), "--only-methods", "original")

    assert result.exit_code == 0, result.output
    [stored] = list((results / run_id / "cells").glob("*.json"))
    original = next(cell for cell in grid(full) if cell.method == "original")
    assert stored.stem == original.cell_hash
    dry = invoke("run", str(config), "--results", str(results), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "3 cells, 1 stored, 2 to run" in text(dry)
    assert "at least" in text(dry) and "s of end-to-end timing" in text(dry)
    assert len(list((results / run_id / "cells").glob("*.json"))) == 1  # ran nothing
    bad = invoke("run", str(config), "--results", str(results), "--only-budgets", "0.5")
    assert bad.exit_code == 1 and "--only-budgets: 0.5 not in the experiment" in text(bad)


def test_retry_failed_moves_failed_cells_aside_and_runs_them_again(tiny):
    config, results = tiny
    first = invoke("run", str(config), "--results", str(results))
    assert first.exit_code == 0, first.output
    assert "1 failed" in text(first) and "failed (1):" in text(first)  # the summary says why
    [run_dir] = [folder for folder in results.iterdir() if folder.is_dir()]
    failed = {
        path.name: path.read_bytes()
        for path in (run_dir / "cells").glob("*.json")
        if json.loads(path.read_text())["status"] == "failed"
    }
    assert len(failed) == 1

    again = invoke("run", str(config), "--results", str(results), "--retry-failed")

    assert again.exit_code == 0, again.output
    assert "moved 1 failed cell files" in text(again)
    moved = {path.name: path.read_bytes() for path in (run_dir / "cells" / "failed").iterdir()}
    assert moved == failed  # kept byte for byte
    [name] = failed
    assert (run_dir / "cells" / name).exists()  # run again (and failed again)
    invoke("run", str(config), "--results", str(results), "--retry-failed")
    assert {p.name for p in (run_dir / "cells" / "failed").iterdir()} == {
        name,
        name.replace(".json", ".1.json"),
    }

    listed = json.loads(stdout_of(invoke("runs", "list", str(results), "-f", "json")))
    assert listed == [{
        "run_id": run_dir.name, "cells": 3, "cells_by_status": listed[0]["cells_by_status"],
        "consolidated": True, "failed_moved_aside": 2,
    }]  # fmt: skip
    assert listed[0]["cells_by_status"]["failed"] == 1


def test_run_summary_counts_unstable_cells_and_missed_budgets():
    from suite.cli.run import budget_missed, run_summary
    from suite.run.store import records_frame

    records = realistic_run()
    base = next(r for r in records if r.method == "original").latency_ms_median
    # one cell over its fraction budget, one unstable, one over a ms budget
    changed = []
    for record in records:
        if (record.method, record.budget.value) == ("dp_depth", 0.8):
            record = record.model_copy(update={"latency_ms_median": 0.85 * base})
        elif (record.method, record.budget.value) == ("layerprune", 0.7):
            record = record.model_copy(update={"stable": False})
        changed.append(record)
    frame = records_frame(changed)
    # an independent target: the budget times the original's latency, for every ok cell
    ok = frame[(frame["status"] == "ok") & (frame["budget_kind"] == "fraction")]
    expected = ok[ok["latency_ms_median"] > ok["budget_value"] * base]

    missed = budget_missed(frame)

    assert sorted(missed["cell_hash"]) == sorted(expected["cell_hash"])
    assert ("dp_depth", 0.8) in set(zip(missed["method"], missed["budget_value"], strict=True))
    [counts, *why] = run_summary(frame)
    assert f"1 unstable, {len(expected)} budget missed" in counts
    assert any(line.startswith("  infeasible (1):") for line in why)


def test_a_missed_budget_is_judged_against_the_target_the_cell_planned_for():
    """A run's cells carry ``target_ms`` (the budget against the run's base measurement); the
    original's own latency in the session may differ from it, and the original misses nothing."""
    from suite.cli.run import budget_missed
    from suite.run.store import records_frame

    records = [r for r in realistic_run() if r.status == "ok"]
    base = next(r for r in records if r.method == "original").latency_ms_median
    planned = [
        record.model_copy(update={"target_ms": record.budget.value * base * 0.9})
        for record in records
    ]  # every cell 10% over a target 10% below the original's fraction
    over = [r for r in planned if r.method != "original" and r.latency_ms_median > r.target_ms]

    missed = budget_missed(records_frame(planned))

    assert over and sorted(missed["cell_hash"]) == sorted(r.cell_hash for r in over)


# artefacts: the plan's network, merge --checkpoint, compress --save-onnx/--save-state-dict


@pytest.fixture
def resnet18_checkpoint(tmp_path):
    import torch

    from suite.core.models import build_model
    from tests.conftest import randomize_batchnorm

    torch.manual_seed(0)
    path = tmp_path / "resnet18.pt"
    torch.save(randomize_batchnorm(build_model("resnet18", 10)).state_dict(), path)
    return path


def onnx_output(path, inputs):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


def test_a_plan_records_its_network_and_merge_refuses_another(tmp_path, resnet18_checkpoint):
    import numpy as np
    import torch

    from suite.core.plan import Plan
    from suite.core.realize import deploy_network, trainable_network
    from suite.core.trace import trace_model

    plan_path = tmp_path / "plan.json"
    made = invoke("plan", "original", "resnet18", "--checkpoint", str(resnet18_checkpoint),
                  "--resolution", "16", "-p", "cpu-onnxruntime", "--budget", "1", "--out",
                  str(plan_path), env={"XDG_CACHE_HOME": str(tmp_path / "cache")})  # fmt: skip
    assert made.exit_code == 0, made.output
    assert Plan.load(plan_path).meta["network"] == {
        "model": "resnet18", "width": 1.0, "resolution": 16, "num_classes": 10
    }  # fmt: skip

    out = tmp_path / "merged.onnx"
    refused = invoke("merge", "resnet18", "--plan", str(plan_path), "--out", str(out))
    assert refused.exit_code == 1 and not out.exists()
    assert (
        "was made for resnet18 width 1.0 at 16 px with 10 classes, not resnet18 width 1.0 at "
        "224 px with 1000 classes: pass --resolution 16 --num-classes 10" in text(refused)
    )

    merged = invoke("merge", "resnet18", "--plan", str(plan_path), "--out", str(out),
                    "--resolution", "16", "--num-classes", "10", "--checkpoint",
                    str(resnet18_checkpoint))  # fmt: skip
    assert merged.exit_code == 0, merged.output
    traced = trace_model("resnet18", num_classes=10, resolution=16)
    traced.model.load_state_dict(torch.load(resnet18_checkpoint))
    traced.model.eval()
    inputs = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = traced.model(torch.from_numpy(inputs)).numpy()  # the unmerged network
    np.testing.assert_allclose(onnx_output(out, inputs), expected, rtol=1e-3, atol=1e-4)
    assert Plan.load(plan_path) == Plan.original(traced.chain)
    deploy_network(trainable_network(traced, Plan.load(plan_path)))  # the plan fits


def test_compress_saves_the_deploy_network_as_onnx_and_state_dict(tmp_path, resnet18_checkpoint):
    import numpy as np
    import torch

    from suite.core.plan import Plan
    from suite.core.realize import deploy_network, trainable_network
    from suite.core.trace import trace_model
    from tests.test_runner import PROFILES

    onnx_path, state_path = tmp_path / "deploy.onnx", tmp_path / "deploy.pt"
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "DEPTHBENCH_PROFILE_PATH": str(PROFILES)}

    result = invoke("compress", "original", "resnet18", "--checkpoint", str(resnet18_checkpoint),
                    "--resolution", "16", "-p", "test-cpu-fast", "--budget", "1", "--steps", "1",
                    "--save-onnx", str(onnx_path), "--save-state-dict", str(state_path),
                    "-f", "json", env=env)  # fmt: skip

    assert result.exit_code == 0, result.output
    fields = json.loads(stdout_of(result))
    traced = trace_model("resnet18", num_classes=10, resolution=16)
    deploy = deploy_network(trainable_network(traced, Plan.from_json(fields["plan"]))).eval()
    deploy.load_state_dict(torch.load(state_path))  # the state dict fits the plan's network
    batch = read_profile(PROFILES / "test-cpu-fast.yaml").batch  # the ONNX file is at its batch
    inputs = np.random.default_rng(0).standard_normal((batch, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = deploy(torch.from_numpy(inputs)).numpy()
    np.testing.assert_allclose(onnx_output(onnx_path, inputs), expected, rtol=1e-3, atol=1e-4)
    again = invoke("compress", "original", "resnet18", "-p", "test-cpu-fast", "--budget", "1",
                   "--save-onnx", str(onnx_path), env=env)  # fmt: skip
    assert again.exit_code == 1 and "deploy.onnx exists; remove it" in text(again)


# asv


def test_asv_tracks_only_the_records_of_the_benchmarked_commit(tmp_path):
    import importlib.util
    import subprocess
    from pathlib import Path

    from suite.run.store import records_frame

    path = Path(__file__).parent.parent / "benchmarks" / "tracked.py"
    spec = importlib.util.spec_from_file_location("tracked", path)
    tracked = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tracked)
    store = ResultsStore(tmp_path)
    for run_id, version in (("default-old", "a" * 40), ("default-new", "b" * 40 + "+dirty")):
        for record in realistic_run(run_id=run_id):
            store.write(record.model_copy(update={"code_version": version}))
        store.consolidate(run_id)

    older = tracked.records_of("a" * 40, tmp_path)
    assert set(older["run_id"]) == {"default-old"}
    assert len(older) == len(records_frame(realistic_run()))
    assert tracked.records_of("b" * 40, tmp_path) is None  # a dirty tree's records are no commit's
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                          cwd=path.parent).stdout.strip()  # fmt: skip
    assert tracked.benchmarked_commit() == head


# shell completion


def complete(*words: str) -> tuple[list[str], list[str]]:
    """What bash completion offers after ``depthbench WORDS``, and the heavy modules it loaded."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.test_cli_options import HEAVY

    script = (
        "import sys\nsys.argv = ['depthbench']\nfrom suite.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print('HEAVY', sorted(m for m in sys.modules if m.split('.')[0] in {set(HEAVY)!r}))\n"
    )
    env = {**os.environ, "_DEPTHBENCH_COMPLETE": "complete_bash",
           "COMP_WORDS": " ".join(["depthbench", *words]), "COMP_CWORD": str(len(words))}  # fmt: skip
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                               check=True, env=env, cwd=Path(__file__).parent.parent)  # fmt: skip
    *offered, heavy = completed.stdout.strip().splitlines()
    return offered, heavy


def test_completion_offers_models_methods_and_profiles_without_importing_torch():
    from suite.core.models import KNOWN_MODELS
    from suite.core.registry import ENTRY_POINT_GROUP, list_methods
    from suite.measure.profiles import list_profiles

    methods, heavy = complete("plan", "")
    assert heavy == "HEAVY []"
    registered = {name for spec in list_methods() for name in (spec.name, *spec.aliases)}
    assert set(methods) == registered
    models, _ = complete("plan", "dp-depth", "")
    assert models == list(KNOWN_MODELS)
    assert complete("measure", "res")[0] == ["resnet18", "resnet34"]
    profiles, heavy = complete("measure", "resnet18", "--profile", "cpu-")
    assert profiles == sorted(p.name for p in list_profiles() if p.name.startswith("cpu-"))
    assert heavy == "HEAVY []"

    from suite.cli.completion import ENTRY_POINT_GROUP as completion_group

    assert completion_group == ENTRY_POINT_GROUP
