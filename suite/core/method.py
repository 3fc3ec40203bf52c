"""The contract between the suite and a compression method.

A method receives a ``PlanContext`` (the traced base network, the data, the profile, the shared
recipe, and memoised ways to measure a plan or get a latency table) and a ``Budget``, and returns a
``MethodResult``: its plan, optionally a trainable network it already trained (DeepRebirth's
layer-wise stage), and metadata for the record. When no plan meets the budget it raises
``Infeasible``; the runner stores that as an infeasible cell with the reason, never a substitute.

The context carries the measuring as three functions the run wires in
(``suite.run.cell.plan_context``): ``screen`` times a deploy network under the profile's light
``table_protocol``, ``confirm`` times it under the full ``protocol``, ``tables`` builds a latency
table. So the contract depends on nothing but the core; the profile, data and recipe are only
passed through to the method.
A fourth, ``map_items`` (``suite.core.items``), runs a table's independent items (importance
entries, latency segments): serially here by default, spread over a Ray cluster under
``--executor ray``.

Budgets are met by *measured* latency, in two steps. Candidates are *screened* under
``table_protocol``: a method may try dozens of plans, and the full protocol on each would make a
small run take hours. A plan whose screen meets the target is
then *confirmed* under the full protocol, the one the cell's final number is measured under; only
a confirmed plan is accepted. Otherwise the method steps on along its own order: a search that
settles where the screen is just under the target would, with measurement noise, pick a plan over
the target about half the time. ``meet_budget`` walks a method's own ranking of plans, from least
to most compressed, and returns the first that screens and confirms within the target. Most
baselines rank *candidates* (blocks, activations, operations) by their paper's score and apply ever
longer prefixes of that ranking: ``walk_ranking`` is that loop, so a baseline is its scoring rule
and one call.

The context counts the latency measurements a method's search asks for (``begin_search``,
``latency_measurements``), for the record's search cost.

The base network a fraction budget refers to is not screened: ``base_latency`` gives its latency
under the full ``protocol``, measured once per run and profile and stored with the run
(``suite.run.baseline``), so every cell of a run, in any process, resolves a budget to the same
target.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from torch import nn

from suite.core.budget import Budget, Fidelity
from suite.core.chain import Chain, MergeRule
from suite.core.items import MapItems, serial_map
from suite.core.plan import Plan
from suite.core.realize import TrainableNetwork, deploy_network, trainable_network
from suite.core.trace import TracedModel
from suite.errors import DepthbenchError

if TYPE_CHECKING:  # types only: the core imports nothing from the measuring or running layers
    from suite.measure.harness import LatencyResult
    from suite.measure.profiles import Profile
    from suite.measure.tables import LatencyTable
    from suite.run.data import DataSplits
    from suite.run.train import FinetuneRecipe

Candidate = TypeVar("Candidate")
Progress = Callable[[str, int, int], None]  # (what, done, total)
Screen = Callable[[nn.Module], "LatencyResult"]  # a deploy network, timed under table_protocol
Confirm = Callable[[nn.Module], "LatencyResult"]  # a deploy network, timed under the full protocol
# T(i, j) of a chain under the profile, reporting (done, total) distinct segments as it measures
TableSource = Callable[[Chain, MergeRule, Callable[[int, int], None]], "LatencyTable"]
BaseLatency = Callable[[], float]  # the base network's latency (ms) under the full protocol


class Infeasible(DepthbenchError):
    """No plan of this method meets the budget; the message says why."""


@dataclass
class PlanContext:
    """Everything a method may use to plan one cell; the same for every method at a budget."""

    traced: TracedModel
    profile: Profile
    data: DataSplits
    recipe: FinetuneRecipe
    screen: Screen
    tables: TableSource
    base_latency: BaseLatency
    confirm: Confirm
    fidelity: Fidelity = "full"
    seed: int = 0
    cache_dir: Path | None = None  # the run's cache folder; None: the user cache
    progress: Progress | None = None
    map_items: MapItems = serial_map  # how a table's items run (suite.core.items)
    _measured: dict = field(default_factory=dict, repr=False)
    _confirmed: dict = field(default_factory=dict, repr=False)
    _tables: dict = field(default_factory=dict, repr=False)
    _asked: set = field(default_factory=set, repr=False)  # (screen|confirm, plan) since begin

    @property
    def chain(self) -> Chain:
        return self.traced.chain

    def measure_plan(self, plan: Plan) -> LatencyResult:
        """End-to-end latency of the plan's deploy network, screened under the profile's light
        ``table_protocol`` (memoised per plan)."""
        return self._latency(plan, self.screen, self._measured, "screen")

    def confirm_plan(self, plan: Plan) -> LatencyResult:
        """End-to-end latency of the plan's deploy network under the profile's full ``protocol``,
        the one the cell's final number is measured under (memoised per plan)."""
        return self._latency(plan, self.confirm, self._confirmed, "confirm")

    def screened(self, plan: Plan) -> LatencyResult | None:
        """The plan's screen, if a method asked for it; measures nothing."""
        return self._measured.get(_plan_key(plan))

    def confirmation(self, plan: Plan) -> LatencyResult | None:
        """The plan's confirmation, if a method asked for it; measures nothing."""
        return self._confirmed.get(_plan_key(plan))

    def begin_search(self) -> None:
        """Start counting a method's latency measurements afresh (one cell's planning)."""
        self._asked.clear()

    @property
    def latency_measurements(self) -> int:
        """Screens plus confirmations of distinct plans asked for since ``begin_search``, whether
        measured now or memoised from an earlier cell of this context: what the search needs,
        not what the order of the cells happened to spare it."""
        return len(self._asked)

    def _latency(self, plan: Plan, timer: Screen, memo: dict, kind: str) -> LatencyResult:
        key = _plan_key(plan)
        self._asked.add((kind, key))
        if key not in memo:
            memo[key] = timer(deploy_network(trainable_network(self.traced, plan)))
        return memo[key]

    def base_latency_ms(self) -> float:
        """The base network's end-to-end latency under the profile's full protocol, the one
        measurement of it the run made (not a screening)."""
        return self.base_latency()

    def target_ms(self, budget: Budget) -> float:
        """The budget as milliseconds of measured end-to-end latency."""
        if budget.kind == "ms":
            return budget.value
        if budget.kind == "fraction":
            return budget.target_ms(self.base_latency_ms())
        raise DepthbenchError(
            "a 'table' budget is in latency-table units and only the dp-depth method plans in "
            "them; give the budget as a fraction of the base latency or in ms"
        )

    def latency_table(self, rule: MergeRule = "upstream") -> LatencyTable:
        """T(i, j) of the chain under the profile (memoised here; cached across runs by the
        ``tables`` source)."""
        if rule not in self._tables:
            self._tables[rule] = self.tables(
                self.chain, rule, lambda done, total: self.report("latency table", done, total)
            )
        return self._tables[rule]

    def report(self, what: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(what, done, total)


def _plan_key(plan: Plan) -> tuple:
    return (plan.activations, plan.boundaries, plan.deleted, plan.replaced)


@dataclass
class MethodResult:
    plan: Plan
    trainable: TrainableNetwork | None = None
    meta: dict = field(default_factory=dict)


def meet_budget(candidates: Iterable[Plan], ctx: PlanContext, budget: Budget, what: str) -> Plan:
    """The first plan along a method's ranking that screens and confirms within the budget.

    ``candidates`` go from least to most compressed. A candidate whose screen meets the target is
    confirmed under the full protocol; if the confirmation misses, the walk goes on to the next,
    more compressed, candidate. ``what`` names the ranking in the reason given when no candidate
    confirms.
    """
    target = ctx.target_ms(budget)
    screens: list[float] = []
    confirmations: list[tuple[float, float]] = []
    for plan in candidates:
        screens.append(ctx.measure_plan(plan).median_ms)
        if screens[-1] > target:
            continue
        confirmations.append((screens[-1], ctx.confirm_plan(plan).median_ms))
        if confirmations[-1][1] <= target:
            return plan
    raise Infeasible(budget_missed(what, ctx, target, min(screens, default=None), confirmations))


def budget_missed(
    what: str,
    ctx: PlanContext,
    target_ms: float,
    fastest_screen: float | None,
    confirmations: Sequence[tuple[float, float]],
) -> str:
    """The reason no plan met ``target_ms``: the fastest screen when none screened within it, else
    the confirmations (screened ms, confirmed ms) that missed it under the full protocol."""
    profile = ctx.profile.name
    if not confirmations:
        return (
            f"{what}: the fastest plan measures {fastest_screen:.4g} ms under {profile} when "
            f"screened, above the budget {target_ms:.4g} ms"
        )
    screened, confirmed = min(confirmations, key=lambda pair: pair[1])
    return (
        f"{what}: {len(confirmations)} plan(s) screened within the budget {target_ms:.4g} ms under "
        f"{profile} but none confirmed under the full protocol; the fastest confirmed "
        f"{confirmed:.4g} ms (screened {screened:.4g} ms)"
    )


def walk_ranking(
    ranking: Sequence[Candidate],
    apply: Callable[[Sequence[Candidate]], Plan],
    ctx: PlanContext,
    budget: Budget,
    what: str,
) -> tuple[Plan, Sequence[Candidate]]:
    """Apply ever longer prefixes of ``ranking`` until a plan's measured latency meets the budget.

    ``ranking`` lists a method's candidates, the first to go first; ``apply(prefix)`` is the plan
    with the candidates of ``prefix`` applied (the empty prefix: the method's least compressed
    plan). Returns the first plan along the prefixes that ``meet_budget`` accepts, with its prefix;
    raises ``Infeasible`` (naming ``what``) when even the whole ranking is too slow. Plans are built
    and measured one at a time, so a budget met early measures no more.
    """
    applied: list[Sequence[Candidate]] = []

    def plans() -> Iterator[Plan]:
        for count in range(len(ranking) + 1):
            applied.append(ranking[:count])
            yield apply(applied[-1])

    plan = meet_budget(plans(), ctx, budget, what)
    return plan, applied[-1]  # meet_budget stops at the plan it accepts: the last one built
