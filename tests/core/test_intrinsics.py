"""Every intrinsic against a numpy reference, on several clients."""

import collections

import numpy as np
import pytest
import tensorflow as tf

import fedsim

NUM_CLIENTS = 7
VECTOR = fedsim.TensorType(tf.float32, [3])
CLIENT_VECTORS = fedsim.FederatedType(VECTOR, fedsim.CLIENTS)
SERVER_VECTOR = fedsim.FederatedType(VECTOR, fedsim.SERVER)
CLIENT_WEIGHTS = fedsim.FederatedType(tf.float32, fedsim.CLIENTS)


@pytest.fixture(scope="module")
def client_vectors():
    rng = np.random.RandomState(1)
    return [rng.randn(3).astype(np.float32) for _ in range(NUM_CLIENTS)]


@pytest.fixture(scope="module")
def client_weights():
    return [np.float32(w) for w in np.random.RandomState(2).uniform(0.5, 5.0, NUM_CLIENTS)]


@pytest.fixture(scope="module", params=[1, 2], ids=["serial", "parallel"])
def context(request):
    return fedsim.LocalExecutionContext(max_parallel_clients=request.param, aggregation_group_size=3)


@pytest.fixture(scope="module")
def scale():
    @fedsim.tf_computation(VECTOR, tf.float32)
    def scale(vector, factor):
        return vector * factor

    return scale


def test_sum_and_mean(client_vectors, context):
    @fedsim.federated_computation(CLIENT_VECTORS)
    def sum_and_mean(values):
        return fedsim.federated_sum(values), fedsim.federated_mean(values)

    with fedsim.execution_context(context):
        total, mean = sum_and_mean(client_vectors)
    np.testing.assert_allclose(total, np.sum(client_vectors, axis=0), rtol=1e-6)
    np.testing.assert_allclose(mean, np.mean(client_vectors, axis=0), rtol=1e-6)


def test_weighted_mean(client_vectors, client_weights, context):
    @fedsim.federated_computation(CLIENT_VECTORS, CLIENT_WEIGHTS)
    def weighted(values, weights):
        return fedsim.federated_mean(values, weight=weights)

    with fedsim.execution_context(context):
        result = weighted(client_vectors, client_weights)
    weights = np.asarray(client_weights, np.float64)
    expected = (np.asarray(client_vectors, np.float64) * weights[:, None]).sum(0) / weights.sum()
    np.testing.assert_allclose(result, expected, rtol=1e-5)


def test_broadcast_map_zip(client_vectors, client_weights, scale, context):
    @fedsim.federated_computation(SERVER_VECTOR, CLIENT_WEIGHTS)
    def scaled_sum(offset, weights):
        per_client = fedsim.federated_map(scale, fedsim.federated_zip([fedsim.federated_broadcast(offset), weights]))
        return fedsim.federated_sum(per_client)

    offset = np.array([1.0, -2.0, 0.5], np.float32)
    with fedsim.execution_context(context):
        result = scaled_sum(offset, client_weights)
    np.testing.assert_allclose(result, offset * np.sum(client_weights), rtol=1e-5)


def test_map_at_server_and_structure_zip_names(scale):
    @fedsim.federated_computation(SERVER_VECTOR)
    def triple(vector):
        three = fedsim.federated_value(np.float32(3.0), fedsim.SERVER)
        zipped = fedsim.federated_zip({"vector": vector, "factor": three})
        return fedsim.federated_map(scale, zipped), zipped

    assert str(triple.type_signature) == "(float32[3]@SERVER -> <float32[3]@SERVER,<vector=float32[3],factor=float32>@SERVER>)"
    tripled, zipped = triple(np.ones(3, np.float32))
    np.testing.assert_array_equal(tripled, [3.0, 3.0, 3.0])
    assert zipped["factor"] == 3.0


def test_map_returns_client_values(client_vectors, scale):
    @fedsim.federated_computation(CLIENT_VECTORS)
    def doubled(values):
        two = fedsim.federated_broadcast(fedsim.federated_value(np.float32(2.0), fedsim.SERVER))
        return fedsim.federated_map(scale, (values, two))

    result = doubled(client_vectors)
    assert len(result) == NUM_CLIENTS
    for got, given in zip(result, client_vectors):
        np.testing.assert_allclose(got, given * 2)


def test_federated_eval_at_clients_and_server():
    @fedsim.tf_computation
    def one():
        return tf.constant(1, tf.int32)

    @fedsim.federated_computation(fedsim.FederatedType(tf.int32, fedsim.CLIENTS))
    def count_clients(ignored):
        del ignored
        return fedsim.federated_sum(fedsim.federated_eval(one, fedsim.CLIENTS)), fedsim.federated_eval(one, fedsim.SERVER)

    assert count_clients([5, 6, 7, 8]) == (4, 1)


def test_federated_aggregate_with_nontrivial_parts(client_vectors, context):
    """Tracks sum, count and element-wise max; reports mean and max. Groups of 3 force merges."""
    accumulator = collections.OrderedDict(total=VECTOR, count=tf.int32, maximum=VECTOR)
    merges = []

    @fedsim.tf_computation(accumulator, VECTOR)
    def accumulate(acc, value):
        return collections.OrderedDict(total=acc["total"] + value, count=acc["count"] + 1, maximum=tf.maximum(acc["maximum"], value))

    @fedsim.tf_computation(accumulator, accumulator)
    def merge(a, b):
        merges.append(1)  # runs at trace time only; the next test shows merges running
        return collections.OrderedDict(total=a["total"] + b["total"], count=a["count"] + b["count"], maximum=tf.maximum(a["maximum"], b["maximum"]))

    @fedsim.tf_computation(accumulator)
    def report(acc):
        return {"mean": acc["total"] / tf.cast(acc["count"], tf.float32), "maximum": acc["maximum"], "count": acc["count"]}

    @fedsim.federated_computation(CLIENT_VECTORS)
    def summarize(values):
        zero = collections.OrderedDict(total=np.zeros(3, np.float32), count=np.int32(0), maximum=np.full(3, -np.inf, np.float32))
        return fedsim.federated_aggregate(values, zero, accumulate, merge, report)

    with fedsim.execution_context(context):
        result = summarize(client_vectors)
    np.testing.assert_allclose(result["mean"], np.mean(client_vectors, axis=0), rtol=1e-5)
    np.testing.assert_array_equal(result["maximum"], np.max(client_vectors, axis=0))
    assert result["count"] == NUM_CLIENTS
    assert merges == [1]  # the merge computation was traced once, not per group


def test_federated_aggregate_merge_is_used():
    """With a merge that marks its use, the result shows how many merges ran (7 clients, groups of 3)."""
    @fedsim.tf_computation(tf.int32, tf.int32)
    def accumulate(acc, value):
        return acc + value

    @fedsim.tf_computation(tf.int32, tf.int32)
    def merge_plus_thousand(a, b):
        return a + b + 1000

    @fedsim.tf_computation(tf.int32)
    def identity(acc):
        return acc

    @fedsim.federated_computation(fedsim.FederatedType(tf.int32, fedsim.CLIENTS))
    def total(values):
        return fedsim.federated_aggregate(values, 0, accumulate, merge_plus_thousand, identity)

    with fedsim.execution_context(fedsim.LocalExecutionContext(aggregation_group_size=3)):
        result = total(list(range(1, 8)))
    assert result == sum(range(1, 8)) + 2 * 1000  # groups [1-3], [4-6], [7]: two merges


def test_secure_sum_bitwidth():
    @fedsim.federated_computation(fedsim.FederatedType((tf.int32, [2]), fedsim.CLIENTS))
    def secure_total(values):
        return fedsim.federated_secure_sum_bitwidth(values, 8)

    values = [np.array([i, 255 - i], np.int32) for i in range(10)]
    np.testing.assert_array_equal(secure_total(values), np.sum(values, axis=0))
    with pytest.raises(ValueError, match=r"client 1: federated_secure_sum_bitwidth: sent values outside \[0, 2\*\*8\)"):
        secure_total([np.array([1, 2], np.int32), np.array([256, 0], np.int32)])


def test_sequence_intrinsics_on_clients():
    element = fedsim.TensorType(tf.float32, [2])

    @fedsim.tf_computation(element)
    def square(x):
        return x * x

    @fedsim.tf_computation(tf.float32, element)
    def add_sum(total, x):
        return total + tf.reduce_sum(x)

    @fedsim.federated_computation(fedsim.FederatedType(fedsim.SequenceType(element), fedsim.CLIENTS))
    def stats(datasets):
        squared = fedsim.sequence_map(square, datasets)
        return (
            fedsim.federated_sum(fedsim.sequence_sum(datasets)),
            fedsim.federated_sum(fedsim.sequence_reduce(squared, np.float32(0.0), add_sum)),
        )

    arrays = [np.random.RandomState(i).randn(4 + i, 2).astype(np.float32) for i in range(3)]
    datasets = [tf.data.Dataset.from_tensor_slices(a) for a in arrays]
    total, sum_of_squares = stats(datasets)
    pooled = np.concatenate(arrays)
    np.testing.assert_allclose(total, pooled.sum(0), rtol=1e-5)
    np.testing.assert_allclose(sum_of_squares, (pooled ** 2).sum(), rtol=1e-5)


def test_sequence_intrinsics_unplaced():
    @fedsim.tf_computation(tf.int64)
    def plus_one(x):
        return x + 1

    @fedsim.federated_computation(fedsim.SequenceType(tf.int64))
    def total_plus_count(dataset):
        return fedsim.sequence_sum(fedsim.sequence_map(plus_one, dataset))

    assert total_plus_count(tf.data.Dataset.range(5)) == sum(range(5)) + 5


def test_federated_struct_selection(client_vectors, client_weights, scale):
    @fedsim.federated_computation(CLIENT_VECTORS, CLIENT_WEIGHTS)
    def select(values, weights):
        zipped = fedsim.federated_zip({"v": values, "w": weights})
        return fedsim.federated_sum(zipped.w), fedsim.federated_mean(zipped.v)

    total_weight, mean = select(client_vectors, client_weights)
    np.testing.assert_allclose(total_weight, np.sum(client_weights), rtol=1e-6)
    np.testing.assert_allclose(mean, np.mean(client_vectors, axis=0), rtol=1e-6)


def test_shared_client_work_runs_once_per_client(client_vectors, monkeypatch):
    @fedsim.tf_computation(VECTOR)
    def work(vector):
        return {"delta": vector, "norm": tf.norm(vector)}

    calls = []
    run_graph = work.call_flat
    monkeypatch.setattr(work, "call_flat", lambda *args: calls.append(1) or run_graph(*args))

    @fedsim.tf_computation(VECTOR)
    def server_update(mean_delta):
        return mean_delta * 2.0

    @fedsim.federated_computation(CLIENT_VECTORS)
    def round_fn(values):
        outputs = fedsim.federated_map(work, values)
        mean = fedsim.federated_mean(outputs.delta)
        updated = fedsim.federated_map(server_update, mean)  # server work between the two aggregations
        return updated, fedsim.federated_sum(outputs.norm), mean

    updated, norms, mean = round_fn(client_vectors)
    np.testing.assert_allclose(updated, 2 * np.mean(client_vectors, axis=0), rtol=1e-6)
    np.testing.assert_allclose(norms, sum(np.linalg.norm(v) for v in client_vectors), rtol=1e-5)
    np.testing.assert_allclose(mean, np.mean(client_vectors, axis=0), rtol=1e-6)
    assert len(calls) == NUM_CLIENTS


def test_bounds_computed_on_the_server_before_the_pass_keep_one_pass(client_vectors, monkeypatch):
    """Aggregations fed by server values that need no aggregation (a bound from the state,
    broadcast; as adaptive clipping does, several times) join the first pass: the clients'
    work runs once per client, not once per bound."""

    @fedsim.tf_computation(VECTOR)
    def work(vector):
        return vector * 3.0

    calls = []
    run_graph = work.call_flat
    monkeypatch.setattr(work, "call_flat", lambda *args: calls.append(1) or run_graph(*args))

    @fedsim.tf_computation(tf.float32)
    def bound_of(state):
        return state + 1.0

    @fedsim.tf_computation(VECTOR, tf.float32)
    def clip(vector, bound):
        return tf.clip_by_value(vector, -bound, bound)

    @fedsim.federated_computation(fedsim.FederatedType(tf.float32, fedsim.SERVER), CLIENT_VECTORS)
    def round_fn(state, values):
        outputs = fedsim.federated_map(work, values)
        total = fedsim.federated_sum(outputs)  # forced first, in the result's order
        sums = [total]
        for scale in (1.0, 2.0, 3.0):  # each bound from the state, through a lambda of the IR
            bound = fedsim.federated_map(bound_of, fedsim.federated_map(
                fedsim.tf_computation(lambda s, k=scale: s * k, tf.float32), state))
            clipped = fedsim.federated_map(clip, (outputs, fedsim.federated_broadcast(bound)))
            sums.append(fedsim.federated_sum(clipped))
        return sums

    state = np.float32(0.5)
    sums = round_fn(state, client_vectors)
    worked = [3.0 * v for v in client_vectors]
    np.testing.assert_allclose(sums[0], np.sum(worked, axis=0), rtol=1e-5)
    for scale, got in zip((1.0, 2.0, 3.0), sums[1:]):
        bound = state * scale + 1.0
        np.testing.assert_allclose(got, np.sum([np.clip(w, -bound, bound) for w in worked], axis=0), rtol=1e-5)
    assert len(calls) == NUM_CLIENTS


def test_calling_a_computation_outside_tracing_is_refused():
    with pytest.raises(RuntimeError, match="federated_computation"):
        fedsim.federated_sum([1.0, 2.0])


def test_two_stage_round_aggregate_broadcast_aggregate(client_vectors, scale):
    """The second stage's client work needs the first stage's result: two passes, right values."""

    @fedsim.tf_computation(VECTOR, VECTOR)
    def squared_distance(value, center):
        return tf.reduce_sum((value - center) ** 2)

    @fedsim.federated_computation(CLIENT_VECTORS)
    def variance(values):
        center = fedsim.federated_mean(values)
        distances = fedsim.federated_map(squared_distance, (values, fedsim.federated_broadcast(center)))
        return fedsim.federated_mean(distances), center

    result, center = variance(client_vectors)
    expected_center = np.mean(client_vectors, axis=0)
    np.testing.assert_allclose(center, expected_center, rtol=1e-6)
    np.testing.assert_allclose(result, np.mean([np.sum((v - expected_center) ** 2) for v in client_vectors]), rtol=1e-5)
