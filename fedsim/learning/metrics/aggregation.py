"""Metrics aggregation across clients: `sum_then_finalize`, TFF's default.

A metrics aggregator is a function `(metric_finalizers, unfinalized_metrics_type) ->
computation {unfinalized}@CLIENTS -> metrics@SERVER`; pass your own as `metrics_aggregator=`.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Optional

from fedsim.core import intrinsics
from fedsim.core import types as ft
from fedsim.core.wrappers import federated_computation
from fedsim.core.placements import CLIENTS
from fedsim.core.wrappers import tf_computation

__all__ = ["finalize_metrics", "sum_then_finalize"]


def finalize_metrics(metric_finalizers: dict[str, Callable], summed: Any) -> collections.OrderedDict:
    """Each metric's finalizer applied to its summed unfinalized values (inside a computation).

    Args:
        metric_finalizers: metric name -> finalizer (from `model.metric_finalizers()`).
        summed: metric name -> summed unfinalized values.

    Returns:
        An OrderedDict of metric name -> finalized value.

    Raises:
        ValueError: if a metric has no finalizer.
    """
    return collections.OrderedDict((name, metric_finalizers[name](values)) for name, values in summed.items())


def sum_then_finalize(metric_finalizers: dict[str, Callable], local_unfinalized_metrics_type: Optional[ft.Type] = None) -> Any:
    """Sums each metric's unfinalized variables over the clients, then finalizes once.

    For Keras metrics and fedsim's counters this equals the metric on the pooled data. Without
    `local_unfinalized_metrics_type` (as TFF allows) the result is a polymorphic computation,
    traced for the type of the first value it is given.

    Args:
        metric_finalizers: metric name -> finalizer (from `model.metric_finalizers()`).
        local_unfinalized_metrics_type: the type of one client's unfinalized metrics.

    Returns:
        A federated computation `metrics@CLIENTS -> finalized metrics@SERVER`.

    Example::

        aggregate = tff.learning.metrics.sum_then_finalize(model.metric_finalizers())
        # inside a federated computation: aggregate(unfinalized_metrics_at_clients)
    """
    if local_unfinalized_metrics_type is None:
        return _polymorphic(metric_finalizers)
    if isinstance(local_unfinalized_metrics_type, ft.FederatedType):
        local_unfinalized_metrics_type = local_unfinalized_metrics_type.member
    missing = [name for name in local_unfinalized_metrics_type.names() if name not in metric_finalizers]
    if missing:
        raise ValueError(f"no finalizer for the metrics {missing}")

    @tf_computation(local_unfinalized_metrics_type)
    def finalize(summed):
        return finalize_metrics(metric_finalizers, summed)

    @federated_computation(ft.FederatedType(local_unfinalized_metrics_type, CLIENTS))
    def aggregate(unfinalized):
        return intrinsics.federated_map(finalize, intrinsics.federated_sum(unfinalized))

    return aggregate


def _polymorphic(metric_finalizers: dict) -> Any:
    @federated_computation
    def aggregate(unfinalized):
        member = unfinalized.type_signature
        member = member.member if isinstance(member, ft.FederatedType) else member
        return sum_then_finalize(metric_finalizers, member)(unfinalized)

    return aggregate
