"""Buffered asynchronous aggregation (FedBuff) over a canonical form's phases.

Asynchronous training runs the same phases as a synchronous round, in a different order: each
client's `work` starts from whatever model version is current when it starts; its output is
folded into a buffer weighted by its *staleness* (versions published since it started); after
`buffer_size` accepted outputs the server runs `report` and `update` on the current state's
carry, which publishes the next version.

The staleness weight multiplies the client's contribution to each *mean* aggregation
(`federated_mean`, weighted or not) and is not part of the mean's normaliser, as in FedBuff
(Nguyen et al. 2022, Algorithm 1: the buffered sum of `s(tau) * delta` divided by K). Sums
(example counts, metric sums) are folded unweighted. A form with any other aggregation (a secure
sum, a min/max, a general `federated_aggregate`) cannot be staleness-weighted and is refused,
as is a form whose model update is not a mean (e.g. `MeanFactory`'s two sums: scaling both
would cancel).

With `buffer_size` equal to the cohort, every client starting from the current version and a
constant weight, a flush is exactly one synchronous round.

Used by `fedsim.simulation.run_async_training_process` (virtual clock); one implementation of
the rule for every runtime.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import attrs
import numpy as np

from fedsim.core import phase_runner
from fedsim.core import structure
from fedsim.core import types as ft
from fedsim.core.canonical_form import CanonicalForm

__all__ = [
    "AsyncUnsupportedError",
    "ConstantStaleness",
    "PolynomialStaleness",
    "StalenessBuffer",
    "check_bufferable",
    "constant_staleness",
    "polynomial_staleness",
    "staleness_refusal",
    "staleness_weight_from_json",
    "staleness_weight_to_json",
]

MEAN_KINDS = ("mean", "weighted_mean")
BUFFERABLE_KINDS = ("sum",) + MEAN_KINDS


class AsyncUnsupportedError(TypeError):
    """The process's aggregation cannot be run asynchronously; the message says why."""


@attrs.frozen
class PolynomialStaleness:
    """FedBuff's staleness weight `1 / (1 + staleness) ** exponent`, as data (it travels in a
    run's manifest to the serverless handler)."""

    exponent: float = 0.5

    def __call__(self, staleness: int) -> float:
        return 1.0 / (1.0 + staleness) ** self.exponent

    def to_json(self) -> dict:
        return {"kind": "polynomial", "exponent": float(self.exponent)}


@attrs.frozen
class ConstantStaleness:
    """The weight 1 whatever the staleness (plain asynchronous buffering)."""

    def __call__(self, staleness: int) -> float:
        return 1.0

    def to_json(self) -> dict:
        return {"kind": "constant"}


def polynomial_staleness(exponent: float = 0.5) -> PolynomialStaleness:
    """FedBuff's staleness weight `1 / (1 + staleness) ** exponent`.

    Args:
        exponent: how fast the weight falls with staleness (FedBuff uses 0.5).

    Returns:
        A callable `staleness -> weight` in (0, 1] (JSON-able with `to_json`).

    Raises:
        ValueError: if `exponent` is negative or not finite.

    Example:
        >>> polynomial_staleness()(3)
        0.5
    """
    if not (isinstance(exponent, (int, float)) and math.isfinite(exponent) and exponent >= 0):
        raise ValueError(f"the staleness exponent must be a non-negative number, got {exponent!r}")
    return PolynomialStaleness(float(exponent))


def constant_staleness() -> ConstantStaleness:
    """The weight 1 whatever the staleness (plain asynchronous SGD-style buffering).

    Returns:
        A callable `staleness -> 1.0` (JSON-able with `to_json`).
    """
    return ConstantStaleness()


def staleness_weight_from_json(document: Any, source: str = "the staleness weight") -> Callable[[int], float]:
    """The staleness weight a manifest names (`{"kind": "polynomial", "exponent": e}` or
    `{"kind": "constant"}`).

    Args:
        document: the JSON value.
        source: where it came from, for the error message.

    Returns:
        The weight function.

    Raises:
        ValueError: if the document is not one of the two kinds.
    """
    if isinstance(document, dict) and document.get("kind") == "constant":
        return ConstantStaleness()
    if isinstance(document, dict) and document.get("kind") == "polynomial":
        return polynomial_staleness(document.get("exponent"))
    raise ValueError(f"{source} is not a staleness weight ({{'kind': 'polynomial' | 'constant'}}): {str(document)[:200]}")


def staleness_weight_to_json(weight: Any) -> dict:
    """The JSON form of a staleness weight made by `polynomial_staleness` or `constant_staleness`.

    Raises:
        TypeError: for any other callable (arbitrary code cannot travel to the server).
    """
    if isinstance(weight, (PolynomialStaleness, ConstantStaleness)):
        return weight.to_json()
    raise TypeError(f"on a stack the staleness weight is polynomial_staleness(e) or constant_staleness(), got {weight!r}: "
                    f"the handler runs no code from the notebook")


def check_bufferable(form: CanonicalForm, name: str = "the process") -> None:
    """Refuses a form whose aggregations cannot be buffered and staleness-weighted.

    Args:
        form: the canonical form of a training process's `next`.
        name: the process's name, for the message.

    Raises:
        AsyncUnsupportedError: if an aggregation is not a sum or a mean, or there is no mean
            (the model update must be a mean to be weighted), or `next` does not return its state.
    """
    kinds = tuple(form.aggregation_kinds)
    others = sorted({kind for kind in kinds if kind not in BUFFERABLE_KINDS})
    if others:
        raise AsyncUnsupportedError(
            f"{name} cannot run asynchronously: its round aggregates with {', '.join(others)}, and buffered "
            f"asynchronous aggregation weights each update by its staleness, which needs sums and means only "
            f"(a secure sum, a median, a min/max or a custom federated_aggregate cannot be weighted)"
        )
    if not any(kind in MEAN_KINDS for kind in kinds):
        raise AsyncUnsupportedError(
            f"{name} cannot run asynchronously: its model update is not aggregated by a mean (found only "
            f"{', '.join(kinds) or 'no aggregation'}); a mean built from two sums (MeanFactory, robust, DP or "
            f"secure aggregators) would cancel the staleness weight. Use the default aggregator "
            f"(build_weighted_fed_avg without model_aggregator)."
        )
    if not form.iterates:
        raise AsyncUnsupportedError(f"{name} cannot run asynchronously: its next does not return its state first")


@attrs.define
class StalenessBuffer:
    """The server's buffer: client outputs folded with staleness weights until it is full.

    Attributes:
        form: the canonical form (checked with `check_bufferable`).
        buffer_size: K, the accepted outputs per server step.
        staleness_weight: `staleness -> weight`.
        max_staleness: outputs staler than this are refused (None: none are).
    """

    form: CanonicalForm
    buffer_size: int
    staleness_weight: Callable[[int], float] = attrs.field(factory=polynomial_staleness)
    max_staleness: Optional[int] = None
    _aggregation: Any = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        if not (isinstance(self.buffer_size, int) and self.buffer_size >= 1):
            raise ValueError(f"buffer_size must be a positive int, got {self.buffer_size!r}")
        if self.max_staleness is not None and not (isinstance(self.max_staleness, int) and self.max_staleness >= 0):
            raise ValueError(f"max_staleness must be a non-negative int or None, got {self.max_staleness!r}")
        check_bufferable(self.form)
        self._aggregation = phase_runner.Aggregation.of(self.form)

    @property
    def count(self) -> int:
        """Outputs folded since the last flush."""
        return self._aggregation.count

    @property
    def full(self) -> bool:
        return self.count >= self.buffer_size

    def refusal(self, staleness: int) -> Optional[str]:
        """Why an output of this staleness is refused, or None if it is accepted."""
        return staleness_refusal(staleness, self.max_staleness)

    def add(self, client_output: Any, staleness: int) -> float:
        """Folds one accepted client output, its means scaled by the staleness weight.

        Args:
            client_output: what the form's `work` returned for the client.
            staleness: the versions published since the client's model.

        Returns:
            The weight applied.

        Raises:
            ValueError: if the output is refused (see `refusal`) or the weight is not in [0, 1].
        """
        reason = self.refusal(staleness)
        if reason:
            raise ValueError(reason)
        weight = float(self.staleness_weight(staleness))
        if not (0.0 <= weight <= 1.0):
            raise ValueError(f"the staleness weight of staleness {staleness} is {weight}, outside [0, 1]")
        self._aggregation.add(scale_means(self.form, client_output, weight))
        return weight

    def flush(self, carry: Any) -> Any:
        """The server step: the form's `update` on `carry` and the buffered aggregates; empties the buffer.

        Args:
            carry: the current state's carry (from `prepare`).

        Returns:
            The update's result (next state first).
        """
        result = phase_runner.update(self.form.update, carry, self._aggregation.result())
        self._aggregation = phase_runner.Aggregation.of(self.form)
        return result


def staleness_refusal(staleness: int, max_staleness: Optional[int]) -> Optional[str]:
    """Why an update of this staleness is refused (None: it is accepted); the one rule for the
    simulation and the serverless handler.

    Args:
        staleness: versions published since the update's model.
        max_staleness: the largest accepted (None: no limit).

    Returns:
        The reason, or None.
    """
    if staleness < 0:
        return f"staleness {staleness} is negative: the update claims a model version not yet published"
    if max_staleness is not None and staleness > max_staleness:
        return f"staleness {staleness} exceeds max_staleness {max_staleness}"
    return None


def scale_means(form: CanonicalForm, client_output: Any, weight: float) -> Any:
    """`client_output` with the values of its mean aggregations multiplied by `weight`.

    A weighted mean's weight is left as it is: the staleness weight scales the contribution,
    not the normaliser. Integer leaves are never scaled (means are over floats).
    """
    if weight == 1.0:
        return client_output
    output_type = form.work.type_signature.result
    elements = structure.struct_elements(client_output, output_type)
    scaled = []
    for kind, element, element_type in zip(form.aggregation_kinds, elements, output_type):
        if kind == "mean":
            element = _scale(element, element_type, weight)
        elif kind == "weighted_mean":
            value, mean_weight = structure.struct_elements(element, element_type)
            element = structure.pack_struct(element_type, [_scale(value, element_type[0], weight), mean_weight], like=element)
        scaled.append(element)
    return structure.pack_struct(output_type, scaled, like=client_output)


def _scale(value: Any, value_type: ft.Type, weight: float) -> Any:
    leaves = structure.flatten_value(value, value_type)
    scaled = [
        (np.asarray(leaf) * np.asarray(weight, dtype=np.asarray(leaf).dtype)) if leaf_type.dtype.is_floating else leaf
        for leaf, leaf_type in zip(leaves, ft.flatten_type(value_type))
    ]
    return structure.unflatten_value(value_type, scaled)
