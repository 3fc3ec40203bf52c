"""The uncompressed network, planned and measured like every method: the reference of each table."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from methods.api import MethodResult, PlanContext
from methods.registry import register_method
from suite.plan import Plan
from suite.store import Budget


class OriginalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


@register_method("original", config=OriginalConfig, paper="(no compression)")
def plan_original(ctx: PlanContext, budget: Budget, config: OriginalConfig) -> MethodResult:
    """Keep every activation and merge nothing, whatever the budget: the point every speed-up is
    relative to."""
    return MethodResult(Plan.original(ctx.chain), meta={"budget_ignored": True})
