"""Salvia: an open, self-hosted machine-learning platform that speaks SageMaker's API."""

__version__ = "0.1.0"
