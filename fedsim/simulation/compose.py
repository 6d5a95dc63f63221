"""Composing a dataset computation with a process: `next` then takes what builds the datasets.

TFF's `compose_dataset_computation_with_iterative_process` (and `..._with_learning_process`):
given a computation `T -> U*` (for example `ClientData.dataset_computation`, client id ->
dataset) and a process whose `next` takes `{U*}@CLIENTS`, the composed process's `next` takes
`{T}@CLIENTS` instead, and each client builds its own dataset from it inside the round. This
is how a round is given client ids rather than datasets, so the data is read where it lives.

Example::

    process = fedsim.simulation.compose_dataset_computation_with_learning_process(
        client_data.dataset_computation, learning_process)
    output = process.next(state, ["client_0", "client_7"])
"""

from __future__ import annotations

import inspect
from typing import Any

from fedsim.core import intrinsics
from fedsim.core import types as ft
from fedsim.core.computation import Computation
from fedsim.core.placements import CLIENTS
from fedsim.core.wrappers import federated_computation
from fedsim.templates import IterativeProcess

__all__ = ["compose_dataset_computation_with_iterative_process", "compose_dataset_computation_with_learning_process"]


def compose_dataset_computation_with_iterative_process(dataset_computation: Computation, process: IterativeProcess) -> IterativeProcess:
    """A process of the same class whose `next` takes the dataset computation's argument at CLIENTS.

    Clients then build their own datasets (e.g. from a client id), as in TFF.

    Args:
        dataset_computation: a `tf_computation` `arg -> dataset`.
        process: an `IterativeProcess` whose `next` takes `{dataset}@CLIENTS` as its second argument.

    Returns:
        The composed process, of the same class as `process`.

    Raises:
        TypeError: if `dataset_computation` takes no argument, returns no dataset, or its
            dataset type does not match the process's.

    Example:
        >>> process = compose_dataset_computation_with_iterative_process(client_dataset_from_id, process)
        >>> state = process.next(state, ["client_0", "client_1"]).state
    """
    if not isinstance(dataset_computation, Computation) or dataset_computation.type_signature.parameter is None:
        raise TypeError(f"dataset_computation must be a computation taking an argument, got {dataset_computation!r}")
    dataset_type = dataset_computation.type_signature.result
    if not isinstance(dataset_type, ft.SequenceType):
        raise TypeError(f"dataset_computation must return a sequence (a dataset), but returns {dataset_type}")
    next_parameter = process.next.type_signature.parameter
    elements = list(next_parameter.elements) if isinstance(next_parameter, ft.StructType) else [(None, next_parameter)]
    wanted = ft.FederatedType(dataset_type, CLIENTS)
    positions = [i for i, (_, t) in enumerate(elements) if isinstance(t, ft.FederatedType) and t.placement is CLIENTS
                 and ft.is_assignable_from(t, wanted)]
    if len(positions) != 1:
        raise TypeError(
            f"compose: the process's next must take exactly one {{{dataset_type}}}@CLIENTS argument to replace, "
            f"but its parameter is {next_parameter}"
        )
    position = positions[0]
    new_elements = list(elements)
    new_elements[position] = (elements[position][0], ft.FederatedType(dataset_computation.type_signature.parameter, CLIENTS))

    def next_fn(*values: Any):
        values = list(values)
        values[position] = intrinsics.federated_map(dataset_computation, values[position])
        return process.next(*values)

    # The composed next takes the same named parameters, one of them now the datasets' argument.
    next_fn.__signature__ = inspect.Signature(
        [inspect.Parameter(name or f"arg{i}", inspect.Parameter.POSITIONAL_OR_KEYWORD) for i, (name, _) in enumerate(new_elements)])
    composed_next = federated_computation(next_fn, *[t for _, t in new_elements])
    return type(process)(process.initialize, composed_next)


def compose_dataset_computation_with_learning_process(dataset_computation: Computation, process: Any) -> Any:
    """The same composition for a `LearningProcess` (its `get_model_weights` etc. carry over).

    Args:
        dataset_computation: a `tf_computation` `arg -> dataset`.
        process: a `LearningProcess`.

    Returns:
        The composed `LearningProcess`.

    Raises:
        TypeError: as `compose_dataset_computation_with_iterative_process`.
    """
    return compose_dataset_computation_with_iterative_process(dataset_computation, process)
