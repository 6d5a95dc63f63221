"""Distributed differential privacy: each client adds a share of the noise, secure aggregation sums.

Central DP trusts the server with every client's clipped update; local DP trusts nobody but pays
the noise once per client. Distributed DP (Kairouz, Liu, Steinke 2021, "The Distributed Discrete
Gaussian Mechanism for Federated Learning with Secure Aggregation") pays it once for the sum:
each client adds discrete Gaussian noise of variance `sigma^2 / n`-ish to its integer update, and
the secure-sum intrinsic (the secure aggregation protocol on silos) releases only the sum, which
carries noise of the target variance. The server never reads a client's update, noised or not.

On each client (`DistributedDpSumFactory`):

1. the value's leaves are flattened into one vector, zero-padded to a power of two `d`, and
   clipped to L2 norm `l2_clip`;
2. it is rotated by a randomized Hadamard transform (random signs from the round's public seed,
   then the normalized Walsh-Hadamard transform), so that its energy spreads evenly over the
   coordinates and few of them are large;
3. it is scaled by `scale` (chosen so that a client's noised coordinate leaves the secure sum's
   range with probability about `modclip_prob`) and rounded to integers by *conditional
   randomized rounding*: unbiased stochastic rounding, redrawn until the rounded vector's norm
   is within the bound the accounting uses (Proposition 22 of the paper, with `beta`);
4. discrete Gaussian noise N_Z(0, sigma_int^2) is added per coordinate, from the client's own
   entropy (the sampler of Canonne, Kamath and Steinke 2020: discrete Laplace proposals,
   accepted by rejection);
5. the integers are shifted into `[0, 2**bits)` and summed with `federated_secure_sum_bitwidth`.

The server subtracts the shift, unscales, and undoes the rotation: the result is the sum of the
clipped values plus (rotated) noise of stddev about `noise_multiplier * l2_clip` per coordinate
when `expected_clients_per_round` clients take part.

Accounting: each round reports its mechanism (`ddp_discrete_gaussian` = `{sigma, l2_sensitivity,
l1_sensitivity, dim}`, all in the integer domain); `PrivacyLedger` turns it into
Renyi DP with Proposition 14 of the paper for the round's actual number of clients (fewer
clients: fewer noise shares, more epsilon), composes the rounds and converts to (epsilon, delta)
with dp-accounting. See `ddgauss_rdp`.

A client whose noised coordinate falls outside the range has it clipped to the range (counted
in `ddp_range_clipped_count`); `scale` makes that rare. TFF's removed `DistributedDpSumFactory`
reduced modulo the range instead; fedsim's secure-sum intrinsics sum exactly, and a modular
reduction of an exact sum would tell the server how many clients' values wrapped.

Example::

    aggregator = fedsim.aggregators.UnweightedMeanFactory(
        fedsim.aggregators.DistributedDpSumFactory(noise_multiplier=1.0, expected_clients_per_round=10, l2_clip=0.1))
    process = fedsim.learning.build_unweighted_fed_avg(model_fn, client_optimizer_fn, model_aggregator=aggregator)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tensorflow as tf

from fedsim.aggregators.factory import UnweightedAggregationFactory, check_value_type
from fedsim.core import intrinsics, structure
from fedsim.core import types as ft
from fedsim.core.placements import CLIENTS, SERVER
from fedsim.core.wrappers import federated_computation, tf_computation
from fedsim.templates import AggregationProcess, MeasuredProcessOutput

__all__ = ["DistributedDpSumFactory", "ddgauss_rdp", "sample_discrete_gaussian", "MECHANISM_FIELDS", "MECHANISM_NAME"]

MECHANISM_NAME = "ddp_discrete_gaussian"  # what the factory's state and measurements call its mechanism
MECHANISM_FIELDS = ("sigma", "l2_sensitivity", "l1_sensitivity", "dim")  # its scalars (a metric each, so they survive flattening)
_MAX_ROUNDING_DRAWS = 1000


def ddgauss_rdp(orders: Any, sigma: float, clients: int, l2_sensitivity: float, l1_sensitivity: float, dim: int) -> np.ndarray:
    """Renyi DP of one release of the distributed discrete Gaussian sum (Kairouz et al. 2021, Prop. 14).

    `clients` each add N_Z(0, sigma^2) per coordinate to integer vectors; one client's vector
    changes by at most `l2_sensitivity` (L2) and `l1_sensitivity` (L1). With
    `tau = 10 * sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k+1))` (how far a sum of discrete
    Gaussians is from one discrete Gaussian), and `a = l2 / (sqrt(n) sigma)`,
    `b = l1 / (sqrt(n) sigma)`, the order-`alpha` RDP is the least of
    `alpha a^2 / 2 + tau d`, `alpha (a^2 + 2 b tau + tau^2 d) / 2` and `alpha (a + tau sqrt(d))^2 / 2`.

    Args:
        orders: RDP orders (> 1).
        sigma: each client's discrete Gaussian parameter (integer domain, > 0).
        clients: n, the clients whose noise is in the sum (>= 1).
        l2_sensitivity: the L2 bound of one client's integer vector.
        l1_sensitivity: its L1 bound.
        dim: the vector's dimension.

    Returns:
        The RDP at each order.

    Raises:
        ValueError: an argument is out of range.

    Example:
        >>> ddgauss_rdp([2, 8, 32], sigma=40.0, clients=10, l2_sensitivity=100.0, l1_sensitivity=1e4, dim=1024)
    """
    if not (sigma > 0 and clients >= 1 and l2_sensitivity >= 0 and l1_sensitivity >= 0 and dim >= 1):
        raise ValueError(f"ddgauss_rdp: sigma={sigma}, clients={clients}, sensitivities=({l2_sensitivity}, "
                         f"{l1_sensitivity}), dim={dim} out of range")
    orders = np.asarray(orders, np.float64)
    tau = 10.0 * sum(math.exp(-2.0 * math.pi**2 * sigma**2 * k / (k + 1)) for k in range(1, clients))
    a = l2_sensitivity / (math.sqrt(clients) * sigma)
    b = l1_sensitivity / (math.sqrt(clients) * sigma)
    return np.minimum.reduce([orders * a**2 / 2 + tau * dim,
                              orders * (a**2 + 2 * b * tau + tau**2 * dim) / 2,
                              orders * (a + tau * math.sqrt(dim)) ** 2 / 2])


def rounded_l2_bound(l2: float, beta: float, dim: int) -> float:
    """The L2 norm conditional randomized rounding keeps a vector of norm `l2` within (Prop. 22)."""
    loose = l2 + math.sqrt(dim)
    if beta == 0:
        return loose
    tight = math.sqrt(l2**2 + dim / 4 + math.sqrt(2 * math.log(1 / beta)) * (l2 + math.sqrt(dim) / 2))
    return min(loose, tight)


# Client-side pieces (TensorFlow, float64) ---------------------------------------------------------

def _client_uniform(shape: tf.Tensor) -> tf.Tensor:
    """Uniform [0, 1) draws from the client's own entropy (seed and seed2 0: the kernel seeds
    itself from the OS, whatever seed the computation's author set), so the server cannot
    regenerate a client's noise from the graph."""
    return tf.raw_ops.RandomUniform(shape=shape, dtype=tf.float64, seed=0, seed2=0)


def sample_discrete_gaussian(shape: Any, sigma: float) -> tf.Tensor:
    """Draws from the discrete Gaussian N_Z(0, sigma^2): P(k) proportional to exp(-k^2 / (2 sigma^2)).

    The rejection sampler of Canonne, Kamath and Steinke (2020), vectorized: propose from the
    discrete Laplace of scale `t = floor(sigma) + 1`, accept with probability
    `exp(-(|y| - sigma^2 / t)^2 / (2 sigma^2))`, and redraw the rejected positions.

    Args:
        shape: the output shape (a 1-D int tensor or list).
        sigma: the parameter (>= 0; 0 gives zeros).

    Returns:
        An int64 tensor.

    Example:
        >>> sample_discrete_gaussian([1000], 2.5)
    """
    shape = tf.cast(shape, tf.int32)
    if sigma <= 0:
        return tf.zeros(shape, tf.int64)
    t = math.floor(sigma) + 1.0
    size = tf.reduce_prod(shape)

    def propose(count):
        def geometric():  # P(G = k) = exp(-k / t) (1 - exp(-1 / t))
            return tf.floor(-t * tf.math.log1p(-_client_uniform([count])))

        y = geometric() - geometric()  # discrete Laplace of scale t
        keep = _client_uniform([count]) < tf.exp(-tf.square(tf.abs(y) - sigma**2 / t) / (2 * sigma**2))
        return y, keep

    def body(samples, missing):
        y, keep = propose(size)
        fill = tf.logical_and(missing, keep)
        return tf.where(fill, y, samples), tf.logical_and(missing, tf.logical_not(keep))

    samples, _ = tf.while_loop(lambda s, missing: tf.reduce_any(missing), body,
                               (tf.zeros([size], tf.float64), tf.ones([size], tf.bool)))
    return tf.reshape(tf.cast(samples, tf.int64), shape)


def _hadamard(vector: tf.Tensor, dim: int) -> tf.Tensor:
    """The normalized Walsh-Hadamard transform of a vector of power-of-two length `dim` (its own inverse)."""
    x, half = vector, 1
    while half < dim:
        pairs = tf.reshape(x, [-1, 2, half])
        x = tf.reshape(tf.stack([pairs[:, 0] + pairs[:, 1], pairs[:, 0] - pairs[:, 1]], axis=1), [dim])
        half *= 2
    return x / math.sqrt(dim)


def _signs(seed: tf.Tensor, dim: int) -> tf.Tensor:
    """The rotation's public random signs for the round (the server needs them to undo it)."""
    draws = tf.random.stateless_uniform([dim], seed=seed, dtype=tf.float64)
    return tf.where(draws < 0.5, tf.constant(-1.0, tf.float64), tf.constant(1.0, tf.float64))


def _conditional_rounding(scaled: tf.Tensor, bound: float) -> tf.Tensor:
    """Unbiased stochastic rounding to integers, redrawn until the L2 norm is within `bound`
    (after `_MAX_ROUNDING_DRAWS` failures, rounding toward zero, whose norm is never larger than
    the input's)."""
    floor = tf.floor(scaled)
    fraction = scaled - floor

    def draw():
        return floor + tf.cast(_client_uniform(tf.shape(scaled)) < fraction, tf.float64)

    def body(tries, rounded):
        return tries + 1, draw()

    def too_long(tries, rounded):
        return tf.logical_and(tries < _MAX_ROUNDING_DRAWS, tf.norm(rounded) > bound)

    tries, rounded = tf.while_loop(too_long, body, (tf.constant(1), draw()))
    return tf.where(tf.norm(rounded) > bound, tf.sign(scaled) * tf.floor(tf.abs(scaled)), rounded)


class DistributedDpSumFactory(UnweightedAggregationFactory):
    """A sum with distributed discrete Gaussian noise, computed by secure aggregation.

    TFF's name and arguments (it had this factory and removed it); the `distributed_dgauss`
    mechanism with the Hadamard rotation. See the module docstring for the steps.

    Args:
        noise_multiplier: the sum's noise stddev over `l2_clip`, when
            `expected_clients_per_round` clients take part (>= 0).
        expected_clients_per_round: the clients whose noise shares make up the target noise (>= 1).
        bits: each client's integer coordinate lies in `[0, 2**bits)` (2 to 40).
        l2_clip: the L2 norm each client's value is clipped to (> 0).
        modclip_prob: about the probability that a client's noised coordinate leaves the range.
        beta: conditional rounding's constant in [0, 1) (0: the loose bound, no redraws).

    Raises:
        ValueError: an argument is out of range, or the bits cannot hold the noise.

    Example:
        >>> DistributedDpSumFactory(noise_multiplier=1.0, expected_clients_per_round=10, l2_clip=0.1, bits=20)
    """

    def __init__(self, noise_multiplier: float, expected_clients_per_round: int, bits: int = 20, l2_clip: float = 1.0,
                 modclip_prob: float = 1e-6, beta: float = math.exp(-0.5), mechanism: str = "distributed_dgauss",
                 rotation_type: str = "hadamard"):
        if not (isinstance(noise_multiplier, (int, float)) and noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
            raise ValueError(f"DistributedDpSumFactory: noise_multiplier must be >= 0 and finite, got {noise_multiplier!r}")
        if not (isinstance(expected_clients_per_round, int) and expected_clients_per_round >= 1):
            raise ValueError(f"DistributedDpSumFactory: expected_clients_per_round must be a positive int, got "
                             f"{expected_clients_per_round!r}")
        if not (isinstance(bits, int) and 2 <= bits <= 40):
            raise ValueError(f"DistributedDpSumFactory: bits must be an int from 2 to 40, got {bits!r}")
        if not (l2_clip > 0 and math.isfinite(l2_clip)):
            raise ValueError(f"DistributedDpSumFactory: l2_clip must be positive and finite, got {l2_clip!r}")
        if not 0 < modclip_prob < 1:
            raise ValueError(f"DistributedDpSumFactory: modclip_prob must be in (0, 1), got {modclip_prob!r}")
        if not 0 <= beta < 1:
            raise ValueError(f"DistributedDpSumFactory: beta must be in [0, 1), got {beta!r}")
        if mechanism != "distributed_dgauss" or rotation_type != "hadamard":
            raise ValueError(f"DistributedDpSumFactory runs mechanism='distributed_dgauss' with rotation_type='hadamard'; "
                             f"got {mechanism!r}, {rotation_type!r}")
        self.noise_multiplier, self.expected_clients = float(noise_multiplier), expected_clients_per_round
        self.bits, self.l2_clip, self.modclip_prob, self.beta = bits, float(l2_clip), modclip_prob, beta

    def parameters(self, dim: int) -> dict:
        """The integer-domain parameters of the mechanism for values of padded dimension `dim`.

        Args:
            dim: the power-of-two length a client's flattened value is padded to.

        Returns:
            `{"scale", "sigma", "l2", "l1", "k"}`: the quantization scale, each client's discrete
            Gaussian parameter, one client's L2 and L1 sensitivities after conditional rounding,
            and the stddevs kept inside the range.

        Raises:
            ValueError: the bits leave a clipped coordinate less than one integer step.
        """
        k = math.sqrt(2 * math.log(2 / self.modclip_prob))
        local_stddev = self.noise_multiplier * self.l2_clip / math.sqrt(self.expected_clients)
        # a coordinate of the rotated, clipped value is about N(0, clip^2 / d); its noise share N(0, local^2)
        spread = k * math.sqrt(self.l2_clip**2 / dim + local_stddev**2)
        scale = (2.0 ** (self.bits - 1) - 2.0) / spread
        if scale * self.l2_clip / math.sqrt(dim) < 1.0:
            raise ValueError(f"DistributedDpSumFactory: {self.bits} bits leave a coordinate of a clipped value less than one "
                             f"integer step (scale {scale:.3g}, d = {dim}); use more bits or less noise")
        l2 = rounded_l2_bound(self.l2_clip * scale, self.beta, dim)
        return {"scale": scale, "sigma": local_stddev * scale, "l2": l2, "l1": l2 * min(math.sqrt(dim), l2), "k": k}

    def create(self, value_type: ft.Type) -> AggregationProcess:
        """Builds the aggregation process for values of `value_type`: `next(state, value@CLIENTS)`.

        Args:
            value_type: the type of one client's value (floating-point tensors).

        Returns:
            An `AggregationProcess` whose state is `{"round_seed", "ddp_discrete_gaussian"}` and
            whose measurements are the mechanism and `ddp_range_clipped_count`.

        Raises:
            AggregationFactoryError: the values are not floating-point tensors.
            ValueError: the bits cannot hold the values' integer steps.
        """
        value_type = check_value_type(value_type, "DistributedDpSumFactory", floating=True)
        leaves = ft.flatten_type(value_type)
        sizes = [int(np.prod(leaf.shape, dtype=np.int64)) for leaf in leaves]
        length = sum(sizes)
        dim = 1 << max(0, (length - 1).bit_length())
        p = self.parameters(dim)
        scale, sigma, l2_int = p["scale"], p["sigma"], p["l2"]
        clip, bits, shift = self.l2_clip, self.bits, 2 ** (self.bits - 1)
        mechanism = dict(zip(MECHANISM_FIELDS, (sigma, l2_int, p["l1"], float(dim))))
        seed_type = ft.TensorType(tf.int64, [2])

        @tf_computation(value_type, seed_type)
        def encode(value, seed):
            flat = tf.concat([tf.reshape(tf.cast(leaf, tf.float64), [-1]) for leaf in structure.leaves(value)], 0)
            flat = tf.pad(flat, [[0, dim - length]])
            flat = flat * tf.minimum(tf.constant(1.0, tf.float64), clip / tf.maximum(tf.norm(flat), 1e-300))
            rotated = _hadamard(flat * _signs(seed, dim), dim)
            integers = tf.cast(_conditional_rounding(rotated * scale, l2_int), tf.int64)
            noised = integers + sample_discrete_gaussian([dim], sigma) + shift
            outside = tf.reduce_any(tf.logical_or(noised < 0, noised > 2 * shift - 1))
            return {"shifted": tf.clip_by_value(noised, 0, 2 * shift - 1), "outside": tf.cast(outside, tf.int32),
                    "one": tf.constant(1, tf.int64)}

        @tf_computation(ft.TensorType(tf.int64, [dim]), tf.int64, seed_type)
        def decode(total, clients, seed):
            centered = tf.cast(total - clients * shift, tf.float64) / scale
            flat = _hadamard(centered, dim) * _signs(seed, dim)
            pieces = tf.split(flat[:length], sizes) if leaves else []
            return structure.unflatten_value(value_type, [tf.cast(tf.reshape(piece, leaf.shape), leaf.dtype)
                                                          for piece, leaf in zip(pieces, leaves)])

        @tf_computation
        def initial_state():
            return {"round_seed": tf.constant([20210212, 0], tf.int64),
                    MECHANISM_NAME: {name: tf.constant(value, tf.float64) for name, value in mechanism.items()}}

        @tf_computation(initial_state.type_signature.result)
        def advanced(state):
            return {"round_seed": state["round_seed"] + tf.constant([0, 1], tf.int64), MECHANISM_NAME: state[MECHANISM_NAME]}

        @federated_computation
        def initialize():
            return intrinsics.federated_eval(initial_state, SERVER)

        state_type = initialize.type_signature.result

        @federated_computation(state_type, ft.FederatedType(value_type, CLIENTS))
        def next_fn(state, value):
            seed = intrinsics.federated_broadcast(state.round_seed)
            encoded = intrinsics.federated_map(encode, (value, seed))
            total = intrinsics.federated_secure_sum_bitwidth(encoded.shifted, bits)
            clients = intrinsics.federated_sum(encoded.one)
            return MeasuredProcessOutput(
                state=intrinsics.federated_map(advanced, state),
                result=intrinsics.federated_map(decode, (total, clients, state.round_seed)),
                measurements=intrinsics.federated_zip({
                    MECHANISM_NAME: getattr(state, MECHANISM_NAME),
                    "ddp_range_clipped_count": intrinsics.federated_sum(encoded.outside),
                }),
            )

        return AggregationProcess(initialize, next_fn)
