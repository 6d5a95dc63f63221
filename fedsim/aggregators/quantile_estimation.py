"""Norms for the bounding wrappers: fixed, or tracking a quantile of the clients' norms.

`AdaptiveNorm` follows Andrew et al., "Differentially Private Learning with Adaptive Clipping"
(2021): each round the clients report whether their norm is at most the current estimate C,
and the server moves C geometrically toward the target quantile,

    C <- C * exp(-learning_rate * (fraction_at_or_below - target_quantile)),

so C shrinks when too many clients are under it and grows when too few are. The norm used for
bounding is `multiplier * C + increment` (zeroing uses a margin above a high quantile). With
`count_noise_stddev > 0` the count of clients under C gets Gaussian noise and is divided by
`expected_clients`, which is what makes the estimate differentially private.

Example::

    norm = AdaptiveNorm(initial_estimate=1.0, target_quantile=0.8)
    factory = fedsim.aggregators.clipping_factory(norm, fedsim.aggregators.MeanFactory())
"""

from __future__ import annotations

from typing import Any, Optional, Union

import attrs
import numpy as np
import tensorflow as tf

from fedsim.core import intrinsics
from fedsim.core import types as ft
from fedsim.core.wrappers import federated_computation
from fedsim.core.placements import CLIENTS, SERVER
from fedsim.core.wrappers import tf_computation

__all__ = ["AdaptiveNorm", "NormProcess", "PrivateQuantileEstimationProcess", "build_norm_process", "seed_computation"]


def _positive(instance, attribute, value):
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf")):
        raise ValueError(f"AdaptiveNorm.{attribute.name} must be a positive finite number, got {value!r}")


def _non_negative(instance, attribute, value):
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf")):
        raise ValueError(f"AdaptiveNorm.{attribute.name} must be a non-negative finite number, got {value!r}")


def _quantile(instance, attribute, value):
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"AdaptiveNorm.target_quantile must be in [0, 1], got {value!r}")


@attrs.frozen
class AdaptiveNorm:
    """A norm that follows the `target_quantile` of the clients' norms (geometric update)."""

    initial_estimate: float = attrs.field(validator=_positive)
    target_quantile: float = attrs.field(default=0.5, validator=_quantile)
    learning_rate: float = attrs.field(default=0.2, validator=_positive)
    multiplier: float = attrs.field(default=1.0, validator=_positive)
    increment: float = attrs.field(default=0.0, validator=_non_negative)
    count_noise_stddev: float = attrs.field(default=0.0, validator=_non_negative)
    expected_clients: Optional[float] = None
    noise_seed: Optional[int] = None
    secure_estimation: bool = False  # count the clients under the estimate with a secure sum

    def __attrs_post_init__(self):
        if self.count_noise_stddev > 0 and not (self.expected_clients and self.expected_clients > 0):
            raise ValueError("AdaptiveNorm: a noised count needs expected_clients > 0 to divide by")


class PrivateQuantileEstimationProcess:
    """TFF's spelling of a quantile-tracking norm: `no_noise(...)` gives an `AdaptiveNorm`.

    Pass it where TFF does: `clipping_factory`, `zeroing_factory`, `SecureSumFactory`.
    """

    @staticmethod
    def no_noise(initial_estimate: float, target_quantile: float, learning_rate: float, multiplier: float = 1.0,
                 increment: float = 0.0, secure_estimation: bool = False) -> AdaptiveNorm:
        """The geometric quantile update with an exact count (no DP noise)."""
        return AdaptiveNorm(initial_estimate=initial_estimate, target_quantile=target_quantile, learning_rate=learning_rate,
                            multiplier=multiplier, increment=increment, secure_estimation=secure_estimation)


@attrs.frozen
class NormProcess:
    """`initialize() -> state@SERVER`; `report: state -> norm` (a tf_computation);
    `next(state@SERVER, norms@CLIENTS) -> state@SERVER`."""

    initialize: Any
    report: Any
    next: Any


def seed_computation(seed: Optional[int]) -> Any:
    """A no-argument tf_computation giving an int64[2] seed: `seed` if given, else random."""

    @tf_computation
    def make_seed():
        if seed is not None:
            return tf.constant([seed, 0], tf.int64)
        return tf.random.uniform([2], minval=0, maxval=2**62, dtype=tf.int64)

    return make_seed


def build_norm_process(norm: Union[float, AdaptiveNorm]) -> NormProcess:
    """The process behind a bounding norm: constant for a number, quantile-tracking otherwise."""
    if isinstance(norm, AdaptiveNorm):
        return _adaptive(norm)
    return _fixed(float(norm))


def _fixed(norm: float) -> NormProcess:
    @federated_computation
    def initialize():
        return intrinsics.federated_value(np.float32(norm), SERVER)

    @tf_computation(tf.float32)
    def report(state):
        return state

    @federated_computation(initialize.type_signature.result, ft.FederatedType(tf.float32, CLIENTS))
    def next_fn(state, norms):
        del norms  # a fixed norm ignores what the clients saw
        return state

    return NormProcess(initialize, report, next_fn)


def _adaptive(spec: AdaptiveNorm) -> NormProcess:
    make_seed = seed_computation(spec.noise_seed)

    @tf_computation
    def initial_estimate():
        return tf.constant(spec.initial_estimate, tf.float32)

    @federated_computation
    def initialize():
        return intrinsics.federated_zip({
            "estimate": intrinsics.federated_eval(initial_estimate, SERVER),
            "seed": intrinsics.federated_eval(make_seed, SERVER),
        })

    state_type = initialize.type_signature.result.member

    @tf_computation(state_type)
    def report(state):
        return state["estimate"] * spec.multiplier + spec.increment

    @tf_computation(state_type)
    def estimate_of(state):
        return state["estimate"]

    @tf_computation(tf.float32, tf.float32)
    def at_or_below(norm, estimate):
        return tf.cast(norm <= estimate, tf.int32), tf.constant(1, tf.int32)

    @tf_computation(tf.int32)
    def as_float(count):
        return tf.cast(count, tf.float32)

    @tf_computation(state_type, tf.float32, tf.float32)
    def update(state, count, clients):
        if spec.count_noise_stddev > 0:
            noise = tf.random.stateless_normal([], seed=state["seed"]) * spec.count_noise_stddev
            fraction = (count + noise) / spec.expected_clients
        else:
            fraction = tf.math.divide_no_nan(count, clients)
        estimate = state["estimate"] * tf.exp(-spec.learning_rate * (fraction - spec.target_quantile))
        return {"estimate": estimate, "seed": state["seed"] + tf.constant([1, 0], tf.int64)}

    @federated_computation(initialize.type_signature.result, ft.FederatedType(tf.float32, CLIENTS))
    def next_fn(state, norms):
        estimate = intrinsics.federated_broadcast(intrinsics.federated_map(estimate_of, state))
        below = intrinsics.federated_map(at_or_below, (norms, estimate))
        if spec.secure_estimation:  # the server learns only the totals
            count, clients = intrinsics.federated_secure_sum(below[0], 1), intrinsics.federated_secure_sum(below[1], 1)
        else:
            count, clients = intrinsics.federated_sum(below[0]), intrinsics.federated_sum(below[1])
        count, clients = intrinsics.federated_map(as_float, count), intrinsics.federated_map(as_float, clients)
        return intrinsics.federated_map(update, (state, count, clients))

    return NormProcess(initialize, report, next_fn)
