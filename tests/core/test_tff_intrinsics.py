"""TFF's intrinsics and call forms that tutorials use, against numpy; also run compiled to phases."""

import collections

import numpy as np
import pytest
import tensorflow as tf

import fedsim as tff
from fedsim.core import phase_runner


def _round_trip(computation):
    return tff.deserialize_computation(tff.serialize_computation(computation))


def test_federated_min_and_max_against_numpy():
    value_type = tff.to_type(collections.OrderedDict(b=(tf.float32, [3]), a=tf.int32))

    @tff.federated_computation(tff.types.type_at_clients(value_type))
    def extremes(values):
        return tff.federated_min(values), tff.federated_max(values)

    rng = np.random.RandomState(0)
    clients = [collections.OrderedDict(b=rng.randn(3).astype(np.float32), a=np.int32(rng.randint(-50, 50))) for _ in range(5)]
    low, high = _round_trip(extremes)(clients)
    np.testing.assert_array_equal(low["b"], np.min([c["b"] for c in clients], axis=0))
    np.testing.assert_array_equal(high["b"], np.max([c["b"] for c in clients], axis=0))
    assert low["a"] == min(c["a"] for c in clients) and high["a"] == max(c["a"] for c in clients)
    assert str(extremes.type_signature.result) == "<<b=float32[3],a=int32>@SERVER,<b=float32[3],a=int32>@SERVER>"
    with pytest.raises(tff.FederatedTypeError, match="placed at CLIENTS"):
        tff.federated_computation(lambda v: tff.federated_min(v), tff.types.type_at_server(tf.float32))


def test_federated_secure_sum_checks_max_input_and_sums_exactly():
    @tff.federated_computation(tff.types.type_at_clients(collections.OrderedDict(b=tf.int32, a=(tf.int32, [2]))))
    def secure(values):
        return tff.federated_secure_sum(values, collections.OrderedDict(b=3, a=1000))

    clients = [collections.OrderedDict(b=np.int32(3), a=np.array([1000, 7], np.int32)),
               collections.OrderedDict(b=np.int32(1), a=np.array([0, 993], np.int32))]
    result = secure(clients)
    assert result["b"] == 4 and list(result["a"]) == [1000, 1000]
    with pytest.raises(ValueError, match=r"federated_secure_sum: sent values outside \[0, 3\]"):
        secure([collections.OrderedDict(b=np.int32(4), a=np.array([0, 0], np.int32))])


def _select_setup():
    @tff.tensorflow.computation(tff.to_type((tf.float32, [6, 2])), tf.int32)
    def row(table, key):
        return table[key]

    @tff.tensorflow.computation(tff.SequenceType((tf.float32, [2])))
    def total(rows):
        return rows.reduce(tf.zeros([2]), lambda a, b: a + b)

    @tff.federated_computation(tff.types.type_at_server((tf.float32, [6, 2])), tff.types.type_at_clients((tf.int32, [3])))
    def select_and_sum(table, keys):
        selected = tff.federated_select(keys, tff.federated_value(6, tff.SERVER), table, row)
        return table, tff.federated_sum(tff.federated_map(total, selected))

    return select_and_sum


def test_federated_select_gives_each_client_its_rows():
    select_and_sum = _select_setup()
    table = np.arange(12, dtype=np.float32).reshape(6, 2)
    keys = [np.array([0, 5, 5], np.int32), np.array([2, 3, 1], np.int32)]
    _, result = select_and_sum(table, keys)
    np.testing.assert_allclose(result, table[np.concatenate(keys)].sum(axis=0))
    with pytest.raises(Exception, match="a client key is >= max_key"):
        select_and_sum(table, [np.array([0, 6, 1], np.int32)])


def test_federated_select_compiles_to_the_canonical_form():
    select_and_sum = _select_setup()
    form = tff.compile_to_canonical_form(select_and_sum)
    table = np.linspace(-1, 1, 12).astype(np.float32).reshape(6, 2)
    keys = [np.array([4, 4, 0], np.int32), np.array([1, 2, 3], np.int32)]
    state, output = phase_runner.run_round(form, table, keys)
    np.testing.assert_allclose(output, table[np.concatenate(keys)].sum(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(state, table)


def test_federated_aggregate_zips_a_tuple_of_client_values():
    @tff.tensorflow.computation
    def zero():
        return tf.constant(0.0)

    @tff.tensorflow.computation(tf.float32, (tf.float32, tf.float32))
    def accumulate(total, pair):
        return total + pair[0] * pair[1]

    @tff.tensorflow.computation(tf.float32, tf.float32)
    def merge(a, b):
        return a + b

    @tff.tensorflow.computation(tf.float32)
    def report(total):
        return total

    @tff.federated_computation(tff.types.type_at_clients(tf.float32), tff.types.type_at_clients(tf.float32))
    def dot(x, y):
        return tff.federated_aggregate((x, y), zero(), accumulate, merge, report)

    assert dot([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(32.0)


def test_python_lists_stand_for_sequences():
    """Custom federated algorithms, part 1: sensor readings given as lists."""

    @tff.tensorflow.computation(tff.SequenceType(tf.float32))
    def local_average(readings):
        total, count = readings.reduce((0.0, 0), lambda state, x: (state[0] + x, state[1] + 1))
        return total / tf.cast(count, tf.float32)

    @tff.federated_computation(tff.types.type_at_clients(tff.SequenceType(tf.float32)))
    def global_average(readings):
        return tff.federated_mean(tff.federated_map(local_average, readings))

    assert local_average([68.5, 70.3, 69.8]) == pytest.approx(np.mean([68.5, 70.3, 69.8]))
    clients = [[68.0, 70.0], [71.0], [68.0, 72.0, 70.0]]
    assert global_average(clients) == pytest.approx(np.mean([np.mean(c) for c in clients]))
    # items of different shapes (a smaller last batch) are elements in order, as a dataset would give them
    folded = tff.tensorflow.computation(lambda d: d.reduce(0.0, lambda a, b: a * 2.0 + tf.reduce_sum(b)),
                                        tff.SequenceType((tf.float32, [None])))([np.ones(2, np.float32), np.full(3, 5.0, np.float32)])
    assert folded == pytest.approx(2.0 * 2.0 + 15.0)


def test_a_tf_computation_calls_another():
    @tff.tensorflow.computation(tf.float32)
    def double(x):
        return x * 2.0

    @tff.tensorflow.computation(tf.float32)
    def quadruple(x):
        return double(double(x))

    assert quadruple(1.5) == 6.0
    assert _round_trip(quadruple)(2.0) == 8.0


def test_formatted_representation_puts_one_element_per_line():
    function_type = tff.FunctionType(tff.to_type(collections.OrderedDict(a=tf.string, b=[tf.float32, (tf.int32, [2])])),
                                     tff.types.type_at_clients(tf.float32))
    assert str(function_type) == "(<a=str,b=<float32,int32[2]>> -> {float32}@CLIENTS)"
    assert function_type.formatted_representation() == "(<\n  a=str,\n  b=<\n    float32,\n    int32[2]\n  >\n> -> {float32}@CLIENTS)"


def test_sparse_tensors_in_types():
    """tf.SparseTensorSpec (TFF's sparse tutorial): a structure of indices, values and dense_shape."""
    spec = tf.SparseTensorSpec([3, 4], tf.float32)
    assert str(tff.to_type(spec)) == "<indices=int64[?,2],values=float32[?],dense_shape=int64[2]>"

    @tff.tensorflow.computation(spec)
    def densify(sparse):
        return tf.reshape(tf.sparse.to_dense(sparse), [3, 4])

    @tff.tensorflow.computation(tf.TensorSpec([3, 4], tf.float32))
    def sparsify(dense):
        return tf.sparse.from_dense(dense)

    @tff.federated_computation(tff.types.type_at_clients(spec))
    def total(sparse):
        return tff.federated_sum(tff.federated_map(densify, sparse))

    rng = np.random.RandomState(0)
    dense = [np.where(rng.rand(3, 4) < 0.3, rng.randn(3, 4), 0).astype(np.float32) for _ in range(3)]
    clients = [tf.sparse.from_dense(d) for d in dense]
    np.testing.assert_allclose(_round_trip(total)(clients), np.sum(dense, axis=0), rtol=1e-6)
    back = sparsify(dense[0])
    assert isinstance(back, tf.SparseTensor)
    np.testing.assert_array_equal(tf.sparse.to_dense(back).numpy(), dense[0])
    with pytest.raises(tff.FederatedTypeError, match="sparse tensor.*leaf by leaf"):
        tff.federated_computation(lambda sparse: tff.federated_sum(sparse), tff.types.type_at_clients(spec))
