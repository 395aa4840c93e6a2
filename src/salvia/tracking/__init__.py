"""Experiment tracking services the platform runs for its users (managed MLflow)."""
