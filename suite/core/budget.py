"""What a method is asked to meet, and how hard it may try.

A ``Budget`` is a latency target: a fraction of the base network's measured latency, milliseconds
of measured latency, or latency-table units (the dp-depth method's T0). ``Fidelity`` is the effort
every method spends on its own search: ``smoke`` its cheapest setting (for tests: not every
method's real algorithm), ``quick`` its real algorithm at a reduced effort that each method states
in one table of its module and on its docs/methods page, ``full`` its paper's settings.
"""

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

Fidelity = Literal["smoke", "quick", "full"]
FIDELITIES: tuple[Fidelity, ...] = get_args(Fidelity)  # cheapest first


class Budget(BaseModel):
    """A latency budget: a fraction of the base network's latency, milliseconds, or table units."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["fraction", "ms", "table"]
    value: float = Field(gt=0, allow_inf_nan=False)

    def target_ms(self, base_latency_ms: float) -> float | None:
        """The milliseconds of measured end-to-end latency this budget allows, given the base
        network's; None for table units, which are planned in without a measured target."""
        return {"fraction": self.value * base_latency_ms, "ms": self.value}.get(self.kind)
