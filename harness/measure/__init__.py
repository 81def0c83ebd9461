"""Measurement of one model with one adapter: tidy rows (metric, value, unit) in one vocabulary."""
from .records import Measurement, not_measured, value_of
from .trial import ALL_MEASUREMENTS, TrialMeasurement, measure_trial

__all__ = ["ALL_MEASUREMENTS", "Measurement", "TrialMeasurement", "measure_trial", "not_measured", "value_of"]
