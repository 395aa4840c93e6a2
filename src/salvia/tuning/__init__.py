"""Automatic model tuning: the engine behind hyperparameter tuning jobs (Optuna inside)."""

from salvia.tuning.engine import KIND, TRAINING_KIND, TuningContext, TuningEngine
from salvia.tuning.plan import TuningPlan
from salvia.tuning.progress import trial_summary

__all__ = ["KIND", "TRAINING_KIND", "TuningContext", "TuningEngine", "TuningPlan", "trial_summary"]
