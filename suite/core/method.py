"""The contract between the suite and a compression method.

A method receives a ``PlanContext`` (the traced base network, the data, the profile, the shared
recipe, and memoised ways to measure a plan or get a latency table) and a ``Budget``, and returns a
``MethodResult``: its plan, optionally a trainable network it already trained (DeepRebirth's
layer-wise stage), and metadata for the record. When no plan meets the budget it raises
``Infeasible``; the runner stores that as an infeasible cell with the reason, never a substitute.

The context carries the measuring as two functions the run wires in (``suite.run.cell.plan_context``):
``screen`` times a deploy network, ``tables`` builds a latency table. So the contract depends on
nothing but the core; the profile, data and recipe are only passed through to the method.
A third, ``map_items`` (``suite.core.items``), runs a table's independent items (importance
entries, latency segments): serially here by default, spread over a Ray cluster under
``--executor ray``.

Budgets are met by *measured* latency: ``meet_budget`` walks a method's own ranking of plans, from
least to most compressed, and returns the first whose deploy network measures within the target.
Most baselines rank *candidates* (blocks, activations, operations) by their paper's score and
apply ever longer prefixes of that ranking: ``walk_ranking`` is that loop, so a baseline is its
scoring rule and one call.
Candidates are screened under the profile's light ``table_protocol``: a method may try dozens of
plans, and the full protocol on each would make a small run take hours. The base network a
fraction budget refers to is not screened: ``base_latency`` gives its latency under the full
``protocol``, measured once per run and profile and stored with the run (``suite.run.baseline``),
so every cell of a run, in any process, resolves a budget to the same target.
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
TableSource = Callable[[Chain, MergeRule], "LatencyTable"]  # T(i, j) of a chain under the profile
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
    fidelity: Fidelity = "full"
    seed: int = 0
    cache_dir: Path | None = None  # the run's cache folder; None: the user cache
    progress: Progress | None = None
    map_items: MapItems = serial_map  # how a table's items run (suite.core.items)
    _measured: dict = field(default_factory=dict, repr=False)
    _tables: dict = field(default_factory=dict, repr=False)

    @property
    def chain(self) -> Chain:
        return self.traced.chain

    def measure_plan(self, plan: Plan) -> LatencyResult:
        """End-to-end latency of the plan's deploy network, screened under the profile's light
        ``table_protocol`` (memoised per plan)."""
        key = (plan.activations, plan.boundaries, plan.deleted, plan.replaced)
        if key not in self._measured:
            deploy = deploy_network(trainable_network(self.traced, plan))
            self._measured[key] = self.screen(deploy)
        return self._measured[key]

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
            self._tables[rule] = self.tables(self.chain, rule)
        return self._tables[rule]

    def report(self, what: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(what, done, total)


@dataclass
class MethodResult:
    plan: Plan
    trainable: TrainableNetwork | None = None
    meta: dict = field(default_factory=dict)


def meet_budget(candidates: Iterable[Plan], ctx: PlanContext, budget: Budget, what: str) -> Plan:
    """The first plan along a method's ranking whose measured latency meets the budget.

    ``candidates`` go from least to most compressed; ``what`` names the ranking in the reason
    given when even the last candidate is too slow.
    """
    target = ctx.target_ms(budget)
    best = None
    for plan in candidates:
        latency = ctx.measure_plan(plan).median_ms
        best = latency if best is None else min(best, latency)
        if latency <= target:
            return plan
    raise Infeasible(
        f"{what}: the fastest plan measures {best:.3f} ms under {ctx.profile.name}, above the "
        f"budget {target:.3f} ms"
    )


def walk_ranking(
    ranking: Sequence[Candidate],
    apply: Callable[[Sequence[Candidate]], Plan],
    ctx: PlanContext,
    budget: Budget,
    what: str,
) -> tuple[Plan, Sequence[Candidate]]:
    """Apply ever longer prefixes of ``ranking`` until the measured latency meets the budget.

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
