"""dp-depth's ``prec`` and ``solver`` options, from the config to the solver.

Upstream solves VGG19 at prec 10 and MobileNetV2 at 20, on its own replayed RTX 2080 Ti tables;
the plan is made through ``plan_dp_depth`` with the importance step replaced by a seeded table
and ``solve`` wrapped to record what it receives.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from methods.dp_depth import method
from methods.dp_depth.importance import importance_entries
from methods.dp_depth.method import DpDepthConfig, Tables, knapsack_precision, plan_dp_depth
from methods.dp_depth.solver import solve
from suite.core.budget import Budget
from suite.core.trace import trace_model
from suite.measure.profiles import load_profile
from suite.measure.tables import build_table


@dataclass(frozen=True)
class FakeImportance:
    """The fields of an ImportanceTable that plan_dp_depth reads."""

    top1_delta: dict
    fidelity: str = "smoke"
    computed: int = 0
    cached: int = 0


def replay_context(model: str, profile: str, monkeypatch) -> tuple[SimpleNamespace, list]:
    """A plan context on upstream's replayed table, a seeded importance table, and the list of
    (prec, solver) that ``solve`` is called with."""
    chain = trace_model(model, num_classes=10).chain
    replay = load_profile(profile)
    latency = build_table(chain, replay)
    rng = random.Random(0)
    entries = importance_entries(chain.segments("upstream"), chain, True)
    importance = {entry: 0.5 - 0.3 * (entry[1] - entry[0]) + rng.gauss(0, 0.2) for entry in entries}
    monkeypatch.setattr(
        method, "measure_importance", lambda ctx, config: FakeImportance(importance)
    )
    calls = []

    def recording_solve(*arguments):
        calls.append((arguments[5], arguments[7]))
        return solve(*arguments)

    monkeypatch.setattr(method, "solve", recording_solve)
    ctx = SimpleNamespace(
        profile=replay,
        chain=chain,
        latency_table=lambda rule: latency,
        data=SimpleNamespace(train=[]),
    )
    return ctx, calls


@pytest.mark.parametrize(
    ("model", "profile", "t0", "family_prec"),
    [
        ("vgg19_bn", "rtx2080ti-replay-vgg19", 158.0, 10),
        ("mobilenet_v2", "rtx2080ti-replay-mbv2-1.0", 25.0, 20),
    ],
)
def test_prec_defaults_per_family_and_stays_overridable(
    model, profile, t0, family_prec, monkeypatch
):
    ctx, calls = replay_context(model, profile, monkeypatch)
    plan = plan_dp_depth(ctx, Budget(kind="table", value=t0), DpDepthConfig()).plan
    assert plan.meta["prec"] == family_prec
    assert calls == [(family_prec, "upstream")]
    overridden = plan_dp_depth(ctx, Budget(kind="table", value=t0), DpDepthConfig(prec=15)).plan
    assert overridden.meta["prec"] == 15
    assert calls[-1] == (15, "upstream")


def test_the_solver_switch_reaches_the_solver(monkeypatch):
    ctx, calls = replay_context("vgg19_bn", "rtx2080ti-replay-vgg19", monkeypatch)
    config = DpDepthConfig(solver="exact")
    plan_dp_depth(ctx, Budget(kind="table", value=158.0), config)
    assert calls == [(10, "exact")]


def test_config_defaults_and_rejects_an_unknown_solver():
    config = DpDepthConfig()
    assert (config.prec, config.solver) == (None, "upstream")
    with pytest.raises(ValidationError, match="solver"):
        DpDepthConfig(solver="fastest")


def test_a_plain_chain_gets_10_units_per_ms_and_a_residual_one_20():
    """The family rule on structure alone, with tables slow enough for the floor not to act."""
    for model, expected in [("vgg11_bn", 10), ("resnet18", 20)]:
        chain = trace_model(model, num_classes=10, resolution=32).chain
        latency = {segment: 100.0 for segment in chain.segments("upstream")}
        tables = Tables(chain, set(latency), latency, {}, "smoke")
        assert knapsack_precision(tables) == expected
