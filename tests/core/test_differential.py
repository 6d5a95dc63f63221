"""The simulation and the serverless path cannot drift apart: a differential test.

Generated computations (random nesting of named and unnamed structures, dict keys out of sorted
order, mixed float dtypes, sums, plain and weighted means, a custom `federated_aggregate`,
secure sums with per-leaf bitwidths, broadcasts of server values, several aggregations in one
round, server-side work after the aggregations) run in the local context and through
compile-to-canonical-form, serialization of every phase to bytes and back, and the phase runner.
Each computation runs on several random cohorts; results must agree to float tolerance.

A failing case names its seed: replay it with `pytest tests/core/test_differential.py -k "[SEED]"`.
"""

import collections

import numpy as np
import pytest
import tensorflow as tf

import fedsim
from fedsim.core import canonical_form, phase_runner, structure

COMPUTATIONS = 40
COHORTS_PER_COMPUTATION = 8  # 40 x 8 = 320 cases per run
NAMES = list("zyxwvuts")  # drawn in random order: dict keys are rarely sorted


def _random_structure(rng, depth, leaf):
    kind = "leaf" if depth == 0 else rng.choice(["leaf", "named", "unnamed", "named"])
    if kind == "leaf":
        return leaf(rng)
    count = int(rng.randint(1, 4))
    if kind == "named":
        keys = list(rng.choice(NAMES, size=count, replace=False))
        return collections.OrderedDict((k, _random_structure(rng, depth - 1, leaf)) for k in keys)
    return tuple(_random_structure(rng, depth - 1, leaf) for _ in range(count))


def _float_leaf(rng):
    return (rng.choice([tf.float32, tf.float64]), [[], [2], [2, 3]][rng.randint(3)])


def _int_leaf(rng):
    return (tf.int32, [[], [3]][rng.randint(2)])


def _random_value(rng, value_type, bitwidths=None):
    leaves = []
    for index, leaf in enumerate(fedsim.core.types.flatten_type(value_type)):
        if leaf.dtype.is_integer:
            leaves.append(np.asarray(rng.randint(0, 2 ** bitwidths[index], size=leaf.shape)).astype(leaf.dtype.as_numpy_dtype))
        else:
            leaves.append(np.asarray(rng.randn(*leaf.shape)).astype(leaf.dtype.as_numpy_dtype))
    return structure.unflatten_value(value_type, leaves)


def _leafwise(value_type, fn):
    return lambda *values: structure.map_structure(lambda _, *leaves: fn(*leaves), value_type, *values)


class Case:
    """One generated computation and what is needed to feed it."""

    def __init__(self, seed):
        rng = np.random.RandomState(seed)
        self.seed = seed
        self.float_type = fedsim.to_type(_random_structure(rng, 2, _float_leaf))
        self.int_type = fedsim.to_type(_random_structure(rng, 1, _int_leaf))
        int_leaves = len(fedsim.core.types.flatten_type(self.int_type))
        self.bitwidths = [int(b) for b in rng.randint(3, 20, size=int_leaves)]
        client_keys = ["f", "i"] if rng.rand() < 0.5 else ["i", "f"]
        self.client_type = fedsim.to_type(collections.OrderedDict(
            (k, self.float_type if k == "f" else self.int_type) for k in client_keys))
        kinds = ["sum", "mean", "weighted_mean", "aggregate", "secure_sum", "broadcast_mean", "server_update"]
        chosen = list(rng.choice(kinds, size=int(rng.randint(2, len(kinds) + 1)), replace=False))
        self.kinds = chosen
        float_type, int_type = self.float_type, self.int_type
        # Bitwidths as a structure of the int type whose dict keys are given in reverse order.
        bitwidth_structure = structure.unflatten_value(int_type, self.bitwidths)
        bitwidth_structure = _reverse_dicts(bitwidth_structure)

        @fedsim.tf_computation(float_type, float_type)
        def shift(value, offset):
            return _leafwise(float_type, lambda a, b: a + 0.5 * b)(value, offset)

        @fedsim.tf_computation(float_type)
        def weight(value):
            first = structure.flatten_value(value, float_type)[0]
            return tf.cast(tf.reduce_sum(tf.abs(first)), tf.float32) + 1.0

        accumulator_type = fedsim.to_type(((tf.float32, []), float_type))
        zero = (np.float32(0), structure.unflatten_value(
            float_type, [np.zeros(leaf.shape, leaf.dtype.as_numpy_dtype) for leaf in fedsim.core.types.flatten_type(float_type)]))

        @fedsim.tf_computation(accumulator_type, float_type)
        def accumulate(accumulator, value):
            count, total = accumulator
            return count + 1.0, _leafwise(float_type, lambda a, b: a + 2.0 * b)(total, value)

        @fedsim.tf_computation(accumulator_type, accumulator_type)
        def merge(first, second):
            return first[0] + second[0], _leafwise(float_type, lambda a, b: a + b)(first[1], second[1])

        @fedsim.tf_computation(accumulator_type)
        def report(accumulator):
            count, total = accumulator
            return _leafwise(float_type, lambda t: t / tf.cast(count, t.dtype))(total)

        @fedsim.federated_computation(fedsim.FederatedType(float_type, fedsim.SERVER),
                                      fedsim.FederatedType(self.client_type, fedsim.CLIENTS))
        def round_fn(state, data):
            floats, ints = data.f, data.i
            outputs = collections.OrderedDict()
            for kind in chosen:
                if kind == "sum":
                    outputs["sum"] = fedsim.federated_sum(floats)
                elif kind == "mean":
                    outputs["mean"] = fedsim.federated_mean(floats)
                elif kind == "weighted_mean":
                    outputs["weighted_mean"] = fedsim.federated_mean(floats, fedsim.federated_map(weight, floats))
                elif kind == "aggregate":
                    outputs["aggregate"] = fedsim.federated_aggregate(floats, zero, accumulate, merge, report)
                elif kind == "secure_sum":
                    outputs["secure_sum"] = fedsim.federated_secure_sum_bitwidth(ints, bitwidth_structure)
                elif kind == "broadcast_mean":
                    shifted = fedsim.federated_map(shift, (floats, fedsim.federated_broadcast(state)))
                    outputs["broadcast_mean"] = fedsim.federated_mean(shifted)
                else:
                    outputs["server_update"] = fedsim.federated_map(shift, (state, fedsim.federated_sum(floats)))
            outputs["state"] = state
            return outputs

        self.computation = round_fn

    def cohort(self, index):
        rng = np.random.RandomState(self.seed * 100 + index)
        state = _random_value(rng, self.float_type)
        count = int(rng.randint(1, 8))
        bitwidths_by_leaf = []
        for name, _ in self.client_type.elements:
            if name == "f":
                bitwidths_by_leaf += [0] * len(fedsim.core.types.flatten_type(self.float_type))
            else:  # small enough that the secure sum of up to 7 clients stays in int32
                bitwidths_by_leaf += [min(b, 27) for b in self.bitwidths]
        clients = [_random_value(rng, self.client_type, bitwidths_by_leaf) for _ in range(count)]
        return state, clients, int(rng.choice([0, 2, 3]))

    def describe(self):
        return f"seed {self.seed}: {self.computation.type_signature}; aggregations {self.kinds}; bitwidths {self.bitwidths}"


def _reverse_dicts(value):
    if isinstance(value, dict):
        return dict(reversed([(k, _reverse_dicts(v)) for k, v in value.items()]))
    if isinstance(value, tuple):
        return tuple(_reverse_dicts(v) for v in value)
    return value


def _from_bytes(form):
    phases = {name: fedsim.deserialize_computation(fedsim.serialize_computation(phase)) for name, phase in form.phases().items()}
    return canonical_form.CanonicalForm.from_phases(form.type_signature, phases)


@pytest.mark.parametrize("seed", range(COMPUTATIONS))
def test_local_context_equals_the_phases_from_bytes(seed):
    case = Case(seed)
    form = _from_bytes(fedsim.compile_to_canonical_form(case.computation))
    result_type = canonical_form.server_result_type(case.computation.type_signature.result)
    for index in range(COHORTS_PER_COMPUTATION):
        state, clients, merge_every = case.cohort(index)
        where = f"{case.describe()}; cohort {index} ({len(clients)} clients, merge_every={merge_every})"
        local = case.computation(state, clients)
        phased = phase_runner.run_round(form, state, clients, merge_every=merge_every)
        local_leaves = structure.flatten_value(local, result_type)
        phased_leaves = structure.flatten_value(phased, result_type)
        assert len(local_leaves) == len(phased_leaves), where
        for position, (leaf_type, want, got) in enumerate(zip(fedsim.core.types.flatten_type(result_type), local_leaves, phased_leaves)):
            got, want = np.asarray(got), np.asarray(want)
            assert got.dtype == want.dtype == leaf_type.dtype.as_numpy_dtype, f"{where}: leaf {position} dtype"
            if leaf_type.dtype.is_integer:
                np.testing.assert_array_equal(got, want, err_msg=f"{where}: leaf {position}")
            else:
                np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5, err_msg=f"{where}: leaf {position}")
