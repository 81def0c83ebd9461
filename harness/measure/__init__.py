"""Measurement of a prepared model: tidy rows (metric, value, unit) in one vocabulary."""
from .costs import measure_costs
from .records import Measurement, not_measured, value_of

__all__ = ["Measurement", "measure_costs", "not_measured", "value_of"]
