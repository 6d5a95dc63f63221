"""Aggregating model metrics across clients."""

from fedsim.learning.metrics.aggregation import finalize_metrics, sum_then_finalize
from fedsim.learning.models.functional import create_functional_metric_fns

__all__ = ["create_functional_metric_fns", "finalize_metrics", "sum_then_finalize"]
