"""TFF's builders of standard parts, in TFF's spelling (`tff.learning.templates.build_*`).

They wrap the parts FedAvg is made of (`fedsim.learning.algorithms.parts`) as the typed part
processes, so a user composing an algorithm gets the same parts FedAvg uses.

Example::

    distributor = build_broadcast_process(model_weights_type)
    client_work = build_model_delta_client_work(model_fn, fedsim.learning.optimizers.build_sgdm(0.1))
    finalizer = build_apply_optimizer_finalizer(lambda: keras.optimizers.SGD(1.0), model_weights_type)
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from fedsim.core import types as ft
from fedsim.learning.templates.processes import ClientWorkProcess, DistributorProcess, FinalizerProcess

__all__ = ["build_broadcast_process", "build_apply_optimizer_finalizer", "build_model_delta_client_work"]


def build_broadcast_process(model_weights_type: Any) -> DistributorProcess:
    """A distributor broadcasting the server's model weights to every client; no state.

    Args:
      model_weights_type: the (unplaced) type of the model weights.
    """
    from fedsim.learning.algorithms import parts

    process = parts.build_broadcast_distributor(ft.to_type(model_weights_type))
    return DistributorProcess(process.initialize, process.next)


def build_apply_optimizer_finalizer(optimizer_fn: Any, model_weights_type: Any) -> FinalizerProcess:
    """A finalizer applying the aggregated model delta to the trainable weights with an optimizer.

    Args:
      optimizer_fn: a `fedsim.learning.optimizers` optimizer, or a no-argument function returning
        one or a Keras optimizer (converted to the same arithmetic; `...optimizers.from_keras_optimizer`).
      model_weights_type: the (unplaced) `ModelWeights` type.

    Returns:
      A `FinalizerProcess` whose state is the optimizer's state. As in TFF, a delta with a NaN
      or an infinity is not applied.
    """
    from fedsim.learning.algorithms import fed_avg, parts

    weights_type = ft.to_type(model_weights_type)
    optimizer = fed_avg.server_optimizer(optimizer_fn)
    process = parts.build_apply_optimizer_finalizer(optimizer, weights_type, weights_type[0], update_is_gradient=False)
    return FinalizerProcess(process.initialize, process.next)


def build_model_delta_client_work(model_fn: Callable[[], Any], optimizer: Any, client_weighting: Any = None,
                                  delta_l2_regularizer: float = 0.0, metrics_aggregator: Optional[Callable] = None
                                  ) -> ClientWorkProcess:
    """FedAvg's client work: train from the broadcast weights, yield the delta and its weight.

    Args:
      model_fn: a no-argument function returning a `VariableModel` (or a `FunctionalModel`).
      optimizer: a `fedsim.learning.optimizers` optimizer, or a no-argument function returning
        one or a Keras optimizer.
      client_weighting: `ClientWeighting.NUM_EXAMPLES` (default) or `UNIFORM`.
      delta_l2_regularizer: FedProx's proximal strength (0: plain FedAvg).
      metrics_aggregator: `(finalizers, metrics_type) -> computation`; default sum-then-finalize.
    """
    from fedsim.learning.algorithms import fed_avg, parts
    from fedsim.learning.algorithms.model_info import as_model_fn, inspect_model_fn

    model_fn = as_model_fn(model_fn)
    weighting = fed_avg.ClientWeighting.NUM_EXAMPLES if client_weighting is None else client_weighting
    info = inspect_model_fn(model_fn)
    client_update = fed_avg.build_client_update(model_fn, optimizer, info.weights_type, info.batch_type, weighting, delta_l2_regularizer)
    process = parts.build_client_work(client_update, parts.build_metrics_aggregation(model_fn, info.metrics_type, metrics_aggregator))
    return ClientWorkProcess(process.initialize, process.next)
