"""Aggregating model metrics across clients."""

from fedsim.learning.metrics.aggregation import sum_then_finalize

__all__ = ["sum_then_finalize"]
