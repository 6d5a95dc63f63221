"""`DifferentiallyPrivateFactory`: the Gaussian mechanism over clipped client values.

Each client's value is clipped to global L2 norm `clip` (fixed, or adaptive as in Andrew et
al. 2021); the server sums, adds Gaussian noise of stddev `noise_multiplier * clip` to every
coordinate, and divides by `clients_per_round` (a fixed denominator, so one client's presence
changes the result by at most `clip / clients_per_round`). Without `clients_per_round` the
result is the noised sum, which nests as `MeanFactory(value_sum_factory=...)`.

The noise comes from stateless random ops seeded by the process state, so a given `noise_seed`
reproduces a run; without one the seed is drawn at `initialize`.

Example::

    factory = DifferentiallyPrivateFactory.gaussian_fixed(noise_multiplier=1.0, clients_per_round=50, clip=0.5)
    process = fedsim.learning.build_unweighted_fed_avg(model_fn, client_optimizer_fn, model_aggregator=factory)
"""

from __future__ import annotations

import math
from typing import Optional, Union

import tensorflow as tf

from fedsim.aggregators.factory import UnweightedAggregationFactory, check_value_type
from fedsim.aggregators.quantile_estimation import AdaptiveNorm, build_norm_process, seed_computation
from fedsim.aggregators.robustness import clip_by_global_l2
from fedsim.core import structure
from fedsim.core import intrinsics
from fedsim.core import types as ft
from fedsim.core.wrappers import federated_computation
from fedsim.core.placements import CLIENTS, SERVER
from fedsim.core.wrappers import tf_computation
from fedsim.templates import AggregationProcess, MeasuredProcessOutput

__all__ = ["DifferentiallyPrivateFactory"]


def _check_number(value, name: str, positive: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= 0 if positive else value < 0):
        kind = "a positive" if positive else "a non-negative"
        raise ValueError(f"DifferentiallyPrivateFactory: {name} must be {kind} finite number, got {value!r}")
    return float(value)


class DifferentiallyPrivateFactory(UnweightedAggregationFactory):
    """Clip, sum, add Gaussian noise, divide by `clients_per_round` (if given).

    Measurements: `clip` (the norm this round), `noise_stddev` (of each coordinate of the
    result), `clipped_count`, and `dp_noise_multiplier`: the round's mechanism as a privacy
    ledger accounts it (`fedsim.aggregators.PrivacyLedger`). State: `<clip, noise_seed,
    dp_noise_multiplier>` (the mechanism declared before the round runs). The class methods `gaussian_fixed`,
    `gaussian_adaptive` and `adaptive_clip_average` are TFF's constructors.

    Args:
        noise_multiplier: the noise's standard deviation over the clip norm (>= 0).
        clip: the L2 clip norm, or an `AdaptiveNorm` that follows a quantile of clients' norms.
        clients_per_round: divide the noised sum by this (the mean's denominator), if given.
        noise_seed: a seed for reproducible noise (tests); None draws fresh noise each round.

    Raises:
        ValueError: if a number is negative or not finite.

    Example:
        >>> factory = fedsim.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
        ...     noise_multiplier=1.0, clients_per_round=10, clip=0.5)
    """

    def __init__(
        self,
        noise_multiplier: float,
        clip: Union[float, AdaptiveNorm],
        clients_per_round: Optional[float] = None,
        noise_seed: Optional[int] = None,
    ):
        self._noise_multiplier = _check_number(noise_multiplier, "noise_multiplier", positive=False)
        if not isinstance(clip, AdaptiveNorm):
            clip = _check_number(clip, "clip", positive=True)
        self._clip = clip
        self._clients_per_round = None if clients_per_round is None else _check_number(clients_per_round, "clients_per_round", positive=True)
        self._noise_seed = noise_seed
        self._accounting_noise_multiplier = self._noise_multiplier  # the constructors below may say otherwise

    @property
    def accounting_noise_multiplier(self) -> float:
        """The noise multiplier of one Gaussian mechanism that costs what a round's releases
        cost together (the value's noise and, with an adaptive clip, the unclipped count's)."""
        return self._accounting_noise_multiplier

    @classmethod
    def gaussian_fixed(
        cls, noise_multiplier: float, clients_per_round: float, clip: float, noise_seed: Optional[int] = None
    ) -> "DifferentiallyPrivateFactory":
        """The DP mean with a fixed L2 clip (DP-FedAvg, McMahan et al. 2018)."""
        return cls(noise_multiplier, _check_number(clip, "clip", positive=True), clients_per_round, noise_seed)

    @classmethod
    def gaussian_adaptive(
        cls,
        noise_multiplier: float,
        clients_per_round: float,
        initial_l2_norm_clip: float = 0.1,
        target_unclipped_quantile: float = 0.5,
        learning_rate: float = 0.2,
        clipped_count_stddev: Optional[float] = None,
        noise_seed: Optional[int] = None,
    ) -> "DifferentiallyPrivateFactory":
        """The DP mean with a clip that tracks a quantile of the norms, privately.

        The count of unclipped clients gets noise of stddev `clipped_count_stddev` (default
        `0.05 * clients_per_round`); the value noise is raised to
        `(noise_multiplier**-2 - (2 * clipped_count_stddev)**-2) ** -0.5` so that the two
        releases together cost what `noise_multiplier` alone would (Andrew et al., Thm. 1).
        """
        clients_per_round = _check_number(clients_per_round, "clients_per_round", positive=True)
        noise_multiplier = _check_number(noise_multiplier, "noise_multiplier", positive=False)
        default_stddev = clipped_count_stddev is None
        if default_stddev:
            clipped_count_stddev = 0.05 * clients_per_round
        clipped_count_stddev = _check_number(clipped_count_stddev, "clipped_count_stddev", positive=False)
        if noise_multiplier > 0:
            if not noise_multiplier < 2 * clipped_count_stddev:  # TFF refuses the same arguments
                remedy = ("the default clipped_count_stddev is 0.05 * clients_per_round: raise clients_per_round, give a "
                          "larger clipped_count_stddev, or lower noise_multiplier" if default_stddev else
                          "raise clipped_count_stddev or lower noise_multiplier")
                raise ValueError(
                    f"DifferentiallyPrivateFactory.gaussian_adaptive: noise_multiplier ({noise_multiplier}) must be below "
                    f"2 * clipped_count_stddev ({2 * clipped_count_stddev:g}) for the count's noise to be paid for; {remedy}"
                )
            value_noise_multiplier = (noise_multiplier**-2 - (2 * clipped_count_stddev) ** -2) ** -0.5
        else:
            value_noise_multiplier, clipped_count_stddev = 0.0, 0.0
        clip = AdaptiveNorm(
            initial_estimate=_check_number(initial_l2_norm_clip, "initial_l2_norm_clip", positive=True),
            target_quantile=target_unclipped_quantile,
            learning_rate=learning_rate,
            count_noise_stddev=clipped_count_stddev,
            expected_clients=clients_per_round,
            noise_seed=None if noise_seed is None else noise_seed + 1,
        )
        factory = cls(value_noise_multiplier, clip, clients_per_round, noise_seed)
        factory._accounting_noise_multiplier = noise_multiplier  # the two releases together (Andrew et al., Thm. 1)
        return factory

    @classmethod
    def adaptive_clip_average(cls, noise_multiplier: float, clients_per_round: float,
                              noise_seed: Optional[int] = None) -> "DifferentiallyPrivateFactory":
        """TFF's `dp_aggregator` mechanism (its `QuantileAdaptiveClipAverageQuery`): values noised
        with `noise_multiplier` times the adaptive clip, the unclipped count separately with
        stddev `0.05 * clients_per_round`; no raised value noise, so no cohort is too small.
        """
        clients_per_round = _check_number(clients_per_round, "clients_per_round", positive=True)
        noise_multiplier = _check_number(noise_multiplier, "noise_multiplier", positive=False)
        clip = AdaptiveNorm(initial_estimate=0.1, target_quantile=0.5, learning_rate=0.2,
                            count_noise_stddev=0.05 * clients_per_round if noise_multiplier > 0 else 0.0,
                            expected_clients=clients_per_round, noise_seed=None if noise_seed is None else noise_seed + 1)
        factory = cls(noise_multiplier, clip, clients_per_round, noise_seed)
        if noise_multiplier > 0:  # two Gaussian releases of sensitivity 1 and 1/2: one of (z^-2 + (2 sigma_b)^-2)^-1/2
            factory._accounting_noise_multiplier = (noise_multiplier**-2 + (2 * clip.count_noise_stddev) ** -2) ** -0.5
        return factory

    def create(self, value_type: ft.Type) -> AggregationProcess:
        """Builds the aggregation process for values of `value_type`: `next(state, value@CLIENTS)`.

        Args:
            value_type: the type of one client's value (a structure of tensors).

        Returns:
            An `AggregationProcess`.

        Raises:
            AggregationFactoryError: if the factory cannot aggregate values of this type.
        """
        value_type = check_value_type(value_type, "DifferentiallyPrivateFactory", floating=True)
        norm_process = build_norm_process(self._clip)
        make_seed = seed_computation(self._noise_seed)
        noise_multiplier = self._noise_multiplier
        denominator = self._clients_per_round or 1.0
        accounted = self._accounting_noise_multiplier

        @tf_computation
        def declared_mechanism():
            return tf.constant(accounted, tf.float64)  # float64: the ledger accounts the exact multiplier

        @tf_computation(value_type, tf.float32)
        def clip(value, clip_norm):
            clipped, hit, value_norm = clip_by_global_l2(value, clip_norm)
            return clipped, tf.cast(hit, tf.int32), value_norm

        @tf_computation(value_type, tf.float32, ft.TensorType(tf.int64, [2]))
        def add_noise(total, clip_norm, seed):
            stddev = noise_multiplier * clip_norm
            leaves = structure.leaves(total)
            noised = []
            for index, leaf in enumerate(leaves):
                leaf_seed = seed + tf.constant([0, index], tf.int64)
                noise = tf.random.stateless_normal(tf.shape(leaf), seed=leaf_seed, stddev=tf.cast(stddev, leaf.dtype), dtype=leaf.dtype)
                noised.append((leaf + noise) / tf.cast(denominator, leaf.dtype))
            return structure.pack_like(total, noised), seed + tf.constant([1, 0], tf.int64), stddev / denominator

        @federated_computation
        def initialize():
            return intrinsics.federated_zip({
                "clip": norm_process.initialize(), "noise_seed": intrinsics.federated_eval(make_seed, SERVER),
                "dp_noise_multiplier": intrinsics.federated_eval(declared_mechanism, SERVER),
            })

        @federated_computation(initialize.type_signature.result, ft.FederatedType(value_type, CLIENTS))
        def next_fn(state, value):
            clip_norm = intrinsics.federated_map(norm_process.report, state.clip)
            clipped = intrinsics.federated_map(clip, (value, intrinsics.federated_broadcast(clip_norm)))
            total = intrinsics.federated_sum(clipped[0])
            noised = intrinsics.federated_map(add_noise, (total, clip_norm, state.noise_seed))
            return MeasuredProcessOutput(
                state=intrinsics.federated_zip({"clip": norm_process.next(state.clip, clipped[2]), "noise_seed": noised[1],
                                                "dp_noise_multiplier": state.dp_noise_multiplier}),
                result=noised[0],
                measurements=intrinsics.federated_zip({
                    "clip": clip_norm,
                    "noise_stddev": noised[2],
                    "clipped_count": intrinsics.federated_sum(clipped[1]),
                    "dp_noise_multiplier": state.dp_noise_multiplier,
                }),
            )

        return AggregationProcess(initialize, next_fn)

