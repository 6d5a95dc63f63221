"""Metrics aggregation across clients: `sum_then_finalize`, TFF's default.

A metrics aggregator is a function `(metric_finalizers, unfinalized_metrics_type) ->
computation {unfinalized}@CLIENTS -> metrics@SERVER`; pass your own as `metrics_aggregator=`.
"""

from __future__ import annotations

import collections
from typing import Callable

from fedsim.core import intrinsics
from fedsim.core import types as ft
from fedsim.core.federated_tracing import FederatedComputation
from fedsim.core.wrappers import federated_computation
from fedsim.core.placements import CLIENTS
from fedsim.core.wrappers import tf_computation

__all__ = ["sum_then_finalize"]


def sum_then_finalize(metric_finalizers: dict[str, Callable], local_unfinalized_metrics_type: ft.Type) -> FederatedComputation:
    """Sums each metric's unfinalized variables over the clients, then finalizes once.

    For Keras metrics and fedsim's counters this equals the metric on the pooled data.
    """
    missing = [name for name in local_unfinalized_metrics_type.names() if name not in metric_finalizers]
    if missing:
        raise ValueError(f"no finalizer for the metrics {missing}")

    @tf_computation(local_unfinalized_metrics_type)
    def finalize(summed):
        return collections.OrderedDict((name, metric_finalizers[name](values)) for name, values in summed.items())

    @federated_computation(ft.FederatedType(local_unfinalized_metrics_type, CLIENTS))
    def aggregate(unfinalized):
        return intrinsics.federated_map(finalize, intrinsics.federated_sum(unfinalized))

    return aggregate
