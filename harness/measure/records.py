"""One measurement per row: the tidy vocabulary shared by every part of the harness."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Measurement:
    """metric, value, unit; `step` is None for a final value; `scope` names a module ("" = whole model).

    A value that could not be measured is NaN with the reason in `note`, never a zero.
    """

    metric: str
    value: float
    unit: str
    step: int | None = None
    scope: str = ""
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def is_final(self) -> bool:
        """A whole-model value at the end of the trial: no step, no module scope."""
        return self.step is None and not self.scope


def not_measured(metric: str, unit: str, reason: str, scope: str = "") -> Measurement:
    return Measurement(metric, math.nan, unit, scope=scope, note=f"not measured: {reason}")


def value_of(rows: list[Measurement], metric: str, scope: str = "") -> float:
    """The value of one metric in a list of rows (KeyError if absent)."""
    for row in rows:
        if row.metric == metric and row.scope == scope and row.step is None:
            return row.value
    raise KeyError(f"no measurement {metric!r} (scope {scope!r})")


def final_values(rows: list[Measurement]) -> dict[str, float]:
    """Metric -> value of the whole-model final rows (`harness.store.final_values` is its table twin)."""
    return {row.metric: row.value for row in rows if row.is_final}
