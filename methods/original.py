"""The uncompressed network, planned and measured like every method: the reference of each table."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from suite.core.budget import Budget
from suite.core.method import MethodResult, PlanContext
from suite.core.plan import Plan
from suite.core.registry import register_method


class OriginalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


@register_method("original", config=OriginalConfig, paper="(no compression)")
def plan_original(ctx: PlanContext, budget: Budget, config: OriginalConfig) -> MethodResult:
    """Keep every activation and merge nothing, whatever the budget: the point every speed-up is
    relative to."""
    return MethodResult(Plan.original(ctx.chain), meta={"budget_ignored": True})
