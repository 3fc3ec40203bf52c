"""Experiment files: the shipped configs load; each kind of bad input gets one clear message."""

from pathlib import Path

import pytest
import yaml

from suite.core.budget import Budget
from suite.core.registry import list_methods
from suite.errors import DepthbenchError
from suite.run.config import CONFIG_DIR, DEFAULT_CONFIG, load_experiment

PROFILES = Path(__file__).parent / "data" / "profiles"
# the repository's configs/ folder itself (installed as suite.configs, i.e. CONFIG_DIR)
SHIPPED = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))

VALID = {
    "model": {"name": "mobilenet_v2", "width": 0.25},
    "dataset": {"name": "digits", "resolution": 16},
    "base": {"train": {"steps": 2, "batch_size": 16}},
    "methods": ["original"],
    "budgets": [0.9, 0.8],
    "profiles": ["cpu-onnxruntime"],
    "finetune": {"steps": 1, "batch_size": 16},
}


def write(tmp_path: Path, content: object, name: str = "experiment.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(content))
    return path


def with_field(path: tuple, value: object) -> dict:
    """VALID with one (nested) field replaced."""
    content = yaml.safe_load(yaml.safe_dump(VALID))
    *parents, last = path
    target = content
    for key in parents:
        target = target[key]
    target[last] = value
    return content


def test_default_config_is_the_documented_benchmark():
    experiment = load_experiment(SHIPPED[[p.name for p in SHIPPED].index(DEFAULT_CONFIG.name)])

    assert (experiment.model.name, experiment.model.width) == ("mobilenet_v2", 0.5)
    assert (experiment.dataset.name, experiment.dataset.resolution) == ("digits", 32)
    assert [m.name for m in experiment.methods] == [spec.name for spec in list_methods()]
    assert experiment.budgets == [Budget(kind="fraction", value=0.7)]
    assert experiment.profiles == ["cpu-onnxruntime"]
    assert experiment.seeds == [0, 1, 2] and experiment.fidelity == "quick"
    assert experiment.base.train is not None and experiment.base.checkpoint is None


def test_every_shipped_config_loads():
    names = {path.name for path in SHIPPED}
    assert {"default.yaml", "cifar10.yaml", "imagenet.yaml", "cpu-benchmark.yaml"} <= names
    for path in SHIPPED:
        experiment = load_experiment(path)
        assert experiment.name == path.stem
        assert experiment.methods and experiment.budgets and experiment.profiles


def test_the_cpu_benchmark_is_the_default_run_with_more_seeds_and_a_longer_fine_tune():
    default = load_experiment(SHIPPED[[p.name for p in SHIPPED].index("default.yaml")])
    benchmark = load_experiment(SHIPPED[[p.name for p in SHIPPED].index("cpu-benchmark.yaml")])

    assert (benchmark.model, benchmark.dataset, benchmark.methods) == (
        default.model,
        default.dataset,
        default.methods,
    )
    assert len(benchmark.seeds) == 5 and benchmark.fidelity in ("quick", "full")
    assert len(benchmark.budgets) == 4 > len(default.budgets)
    assert benchmark.finetune.steps > default.finetune.steps


@pytest.mark.parametrize("name", ["cifar10.yaml", "imagenet.yaml"])
def test_example_configs_validate(name):
    experiment = load_experiment(CONFIG_DIR / name)

    assert experiment.name == Path(name).stem
    assert experiment.dataset.root is not None and experiment.dataset.root.is_absolute()


@pytest.mark.parametrize("fidelity", ["smoke", "quick", "full"])
def test_every_fidelity_is_accepted(tmp_path, fidelity):
    path = write(tmp_path, with_field(("fidelity",), fidelity))
    assert load_experiment(path).fidelity == fidelity


def test_name_defaults_to_the_file_stem_and_budgets_take_both_forms(tmp_path):
    budgets = [0.9, {"kind": "ms", "value": 2.5}]
    experiment = load_experiment(write(tmp_path, with_field(("budgets",), budgets), "grid-a.yaml"))

    assert experiment.name == "grid-a"
    assert experiment.budgets == [Budget(kind="fraction", value=0.9), Budget(kind="ms", value=2.5)]
    assert experiment.seeds == [0] and experiment.fidelity == "full"


def test_method_configs_are_stored_with_their_defaults_filled_in(tmp_path):
    spec = next(s for s in list_methods() if s.config.model_fields)
    content = with_field(("methods",), [{"name": spec.name}])

    [entry] = load_experiment(write(tmp_path, content)).methods

    assert entry.name == spec.name
    assert entry.config == spec.make_config({}).model_dump(mode="json")
    assert set(entry.config) == set(spec.config.model_fields)


def test_method_aliases_are_stored_under_the_method_name(tmp_path):
    spec = next((s for s in list_methods() if s.aliases), None)
    if spec is None:
        pytest.skip("no registered method has an alias")
    content = with_field(("methods",), [spec.aliases[0]])

    assert [m.name for m in load_experiment(write(tmp_path, content)).methods] == [spec.name]


def test_relative_paths_are_relative_to_the_file(tmp_path):
    (tmp_path / "configs").mkdir()
    content = with_field(("base",), {"checkpoint": "../weights/base.pt"})
    content["dataset"] = {"name": "cifar10", "root": "~/data/cifar"}

    experiment = load_experiment(write(tmp_path / "configs", content))

    assert experiment.base.checkpoint == tmp_path / "configs" / ".." / "weights" / "base.pt"
    assert experiment.dataset.root == Path.home() / "data" / "cifar"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        (("model", "name"), "resnet99", "field 'model.name': unknown model 'resnet99'; allowed: "),
        (("model", "depth"), 3, "field 'model.depth': unknown field; allowed here: name, width"),
        (("dataset", "name"), "mnist", "field 'dataset.name': unknown data set 'mnist'; allowed: "),
        (("methods",), ["nope"], "field 'methods.0': unknown method 'nope': registered methods"),
        (
            ("methods",),
            [{"name": "original", "config": {"x": 1}}],
            "'original': field 'x': unknown",
        ),
        (("methods",), [{"name": "original", "cfg": {}}], "'methods.0.cfg': unknown field"),
        (("budgets",), [0.9, 0.9], "field 'budgets': Budget(kind='fraction', value=0.9)"),
        (("budgets",), [-0.5], "field 'budgets.0.value': Input should be greater than 0"),
        (("budgets",), [{"kind": "percent", "value": 5}], "'budgets.0.kind': Input should be"),
        (("budgets",), [], "field 'budgets': List should have at least 1 item"),
        (("profiles",), ["mars-tpu"], "field 'profiles': unknown profile 'mars-tpu'; available:"),
        (("finetune", "epochs"), 3, "field 'finetune': give the recipe's length as exactly one"),
        (("finetune", "optimizer"), "adam", "allowed here: epochs, steps, lr, momentum"),
        (("base", "checkpoint"), "w.pt", "field 'base': give exactly one of 'checkpoint'"),
        (("fidelity",), "medium", "field 'fidelity': Input should be 'smoke', 'quick' or 'full'"),
        (("seeds",), [1, 1], "field 'seeds': 1 is listed twice; list each once"),
    ],
)
def test_bad_fields_name_the_file_the_field_and_what_is_allowed(tmp_path, field, value, expected):
    path = write(tmp_path, with_field(field, value))

    with pytest.raises(DepthbenchError) as error:
        load_experiment(path)

    assert f"experiment {path} is invalid" in str(error.value)
    assert expected in str(error.value)


def test_unknown_top_level_field_lists_the_allowed_ones(tmp_path):
    path = write(tmp_path, {**VALID, "epochs": 3})

    with pytest.raises(DepthbenchError, match="field 'epochs': unknown field; allowed here: name"):
        load_experiment(path)


def test_missing_required_fields_are_each_named(tmp_path):
    path = write(tmp_path, {"model": {"name": "resnet18"}})

    with pytest.raises(DepthbenchError) as error:
        load_experiment(path)

    for field in ("dataset", "base", "methods", "budgets", "finetune"):
        assert f"field {field!r}: required but missing" in str(error.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model: [unclosed", "not valid YAML"),
        ("- a list\n- of things\n", "expected a mapping of fields (name, model, dataset"),
    ],
)
def test_files_that_are_not_a_mapping_are_refused(tmp_path, text, expected):
    path = tmp_path / "broken.yaml"
    path.write_text(text)

    with pytest.raises(DepthbenchError) as error:
        load_experiment(path)

    assert expected in str(error.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DepthbenchError, match="experiment file .*nowhere.yaml does not exist"):
        load_experiment(tmp_path / "nowhere.yaml")


def test_profiles_are_found_on_the_profile_path(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPTHBENCH_PROFILE_PATH", str(PROFILES))

    experiment = load_experiment(write(tmp_path, with_field(("profiles",), ["test-cpu-fast"])))

    assert experiment.profiles == ["test-cpu-fast"]
