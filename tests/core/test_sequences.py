"""The fast form (each dataset iterated once, fed as tensors) gives exactly what the dataset form
gives, on every kind of pipeline a TFF user writes, and numpy over one iteration agrees."""

import collections

import numpy as np
import pytest
import tensorflow as tf

import fedsim
from fedsim.core import sequences

BATCHES = fedsim.SequenceType(collections.OrderedDict(
    x=fedsim.TensorType(tf.float32, [None, 3]), y=fedsim.TensorType(tf.int32, [None])))
W = np.array([1.0, -2.0, 0.5], np.float32)


def _arrays(n, seed=0):
    rng = np.random.RandomState(seed)
    return collections.OrderedDict(x=rng.randn(n, 3).astype(np.float32), y=rng.randint(0, 5, n).astype(np.int32))


def _steps(dataset, w):
    """Order- and boundary-sensitive arithmetic over the batches (a loop and a reduce)."""
    total = tf.zeros([3])
    count = tf.constant(0, tf.int32)
    for batch in dataset:  # autograph: a loop over batches, whatever feeds them
        total = total * 0.5 + tf.reduce_sum(batch["x"] * w, axis=0) + tf.cast(tf.reduce_sum(batch["y"]), tf.float32)
        count += tf.shape(batch["y"])[0]
    sizes = dataset.reduce(tf.constant(0, tf.int32), lambda s, b: s * 3 + tf.shape(b["x"])[0])
    return {"total": total, "count": count, "sizes": sizes}


TRACES = []


@fedsim.tf_computation(BATCHES, fedsim.TensorType(tf.float32, [3]))
def fast(dataset, w):
    TRACES.append(1)
    return _steps(dataset, w)


@fedsim.tf_computation(BATCHES, fedsim.TensorType(tf.float32, [3]))
def dataset_only(dataset, w):
    # `take(-1)` is every element; the fast form's stand-in has no `take`, so only the dataset form exists
    return _steps(dataset.take(-1), w)


def _numpy(batches, w):
    total, count, sizes = np.zeros(3, np.float32), 0, 0
    for batch in batches:
        x, y = batch["x"], batch["y"]
        total = total * np.float32(0.5) + (x * w).sum(0, dtype=np.float32) + np.float32(y.sum())
        count += len(y)
        sizes = sizes * 3 + len(y)
    return total, count, sizes


def _base(n=23, seed=0):
    return tf.data.Dataset.from_tensor_slices(_arrays(n, seed))


def _double(batch):
    return collections.OrderedDict(x=batch["x"] * 2.0, y=batch["y"] + 1)


# Each builds a fresh dataset (a seeded shuffle's first iteration is the same each time).
PIPELINES = {
    "bare, uneven last batch": lambda: _base().batch(5),
    "drop_remainder": lambda: _base().batch(5, drop_remainder=True),
    "tutorial: shuffle(seed) batch map prefetch": lambda: _base().shuffle(10, seed=3).batch(4).map(_double).prefetch(2),
    "repeat(3) shuffle batch": lambda: _base(7).repeat(3).shuffle(8, seed=1).batch(4),
    "map filter batch": lambda: _base().map(lambda e: e).filter(lambda e: e["y"] > 1).batch(3),
    "filter that empties the client": lambda: _base().filter(lambda e: e["y"] > 99).batch(3),
    "zero examples": lambda: _base(0).batch(3),
    "take skip": lambda: _base().batch(2).skip(2).take(4),
    "cache": lambda: _base().cache().batch(6),
    "interleave": lambda: tf.data.Dataset.range(3).interleave(lambda i: _base(5).map(lambda e: collections.OrderedDict(
        x=e["x"] + tf.cast(i, tf.float32), y=e["y"])), cycle_length=2, block_length=2).batch(4),
    "batch then filter (uneven batches)": lambda: _base(30).batch(4).filter(lambda b: tf.reduce_sum(b["y"]) % 2 == 0),
}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_every_pipeline_kind_gives_the_dataset_forms_result(name):
    make = PIPELINES[name]
    via_fast = fast(make(), W)
    via_dataset = dataset_only(make(), W)
    total, count, sizes = _numpy(make().as_numpy_iterator(), W)
    for result in (via_fast, via_dataset):
        np.testing.assert_allclose(result["total"], total, rtol=1e-5, atol=1e-5)
        assert (result["count"], result["sizes"]) == (count, sizes)
    np.testing.assert_array_equal(via_fast["total"], via_dataset["total"])  # same elements, same arithmetic
    assert fast.fast_graph() is not None and dataset_only.fast_graph() is None


def test_the_fast_form_is_traced_once_from_the_same_function():
    before = len(TRACES)
    for make in PIPELINES.values():
        fast(make(), W)
    assert len(TRACES) - before <= 1


def test_padded_batches_of_varying_width_and_unbatched_scalars():
    tokens = fedsim.SequenceType(fedsim.TensorType(tf.int32, [None, None]))

    @fedsim.tf_computation(tokens)
    def fold(dataset):
        return dataset.reduce(tf.constant(0, tf.int64), lambda s, b: s * 7 + tf.cast(
            tf.reduce_sum(b) + 100 * tf.shape(b)[1] + 1000 * tf.shape(b)[0], tf.int64))

    rows = [[1], [2, 3, 4], [], [5, 6], [7, 8, 9, 10, 11], [12]]
    padded = tf.data.Dataset.from_generator(lambda: iter(rows), output_signature=tf.TensorSpec([None], tf.int32))
    padded = padded.cache().padded_batch(4)  # widths 3 and 5, an uneven last batch
    expected = 0
    for batch in padded.as_numpy_iterator():
        expected = expected * 7 + int(batch.sum()) + 100 * batch.shape[1] + 1000 * batch.shape[0]
    assert fold(padded) == expected
    assert fold.fast_graph() is not None

    scalars = fedsim.SequenceType(fedsim.TensorType(tf.int32, []))

    @fedsim.tf_computation(scalars)
    def alternating(dataset):
        return dataset.reduce(tf.constant(0), lambda s, v: v - s)

    def values():
        return tf.data.Dataset.from_tensor_slices(np.arange(1, 8, dtype=np.int32)).shuffle(7, seed=2)

    expected = 0
    for value in values().as_numpy_iterator():
        expected = int(value) - expected
    assert alternating(values()) == expected and alternating.fast_graph() is not None


def test_string_batches_with_an_uneven_last_batch_read_as_iterating_gives_them():
    records = fedsim.SequenceType(collections.OrderedDict(
        word=fedsim.TensorType(tf.string, [None]), n=fedsim.TensorType(tf.int32, [None])))

    @fedsim.tf_computation(records)
    def joined(dataset):
        return dataset.reduce(tf.constant(""), lambda s, b: tf.strings.join(
            [s, "|", tf.strings.reduce_join(b["word"], separator=","), ":", tf.strings.as_string(tf.reduce_sum(b["n"]))]))

    def words():
        return tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
            word=[b"a", b"bb", b"", b"dddd", b"e"], n=np.arange(5, dtype=np.int32)))

    pipelines_ = {
        "batched rows": lambda: words().batch(2),  # laid out at once, last batch padded
        "mapped batches": lambda: words().batch(2).map(lambda b: collections.OrderedDict(word=b["word"], n=b["n"] * 2)),
        "shuffled": lambda: words().shuffle(5, seed=4).batch(3),
    }
    for name, make in pipelines_.items():
        expected = tf.constant("")
        for batch in make():
            expected = tf.strings.join([expected, "|", tf.strings.reduce_join(batch["word"], separator=","), ":",
                                        tf.strings.as_string(tf.reduce_sum(batch["n"]))])
        assert joined(make()) == expected.numpy(), name
    assert joined.fast_graph() is not None


def test_an_infinite_dataset_is_a_clear_error_not_a_hang():
    with pytest.raises(sequences.InfiniteSequenceError, match="infinite"):
        fast(_base().batch(5).repeat(), W)

    @fedsim.tf_computation(BATCHES)
    def first_two(dataset):  # takes what it needs: the dataset form, which ends
        return dataset.take(2).reduce(tf.constant(0, tf.int32), lambda s, b: s + tf.reduce_sum(b["y"]))

    assert first_two(_base().batch(5).repeat()) == _arrays(23)["y"][:10].sum()


def test_a_dataset_over_the_memory_budget_streams_through_the_dataset_form():
    dataset = _base(40).batch(8)
    element = BATCHES.element
    assert sequences.materialize(dataset, element, budget_bytes=100) is None
    assert sequences.materialize(dataset, element) is not None
    context = fedsim.LocalExecutionContext(client_data_budget_bytes=100)

    @fedsim.federated_computation(fedsim.FederatedType(BATCHES, fedsim.CLIENTS))
    def totals(datasets):
        return fedsim.federated_map(fast_sizes, datasets)

    expected = [_numpy(d.as_numpy_iterator(), W)[2] for d in (_base(40).batch(8), _base(3).batch(2))]
    with fedsim.execution_context(context):
        assert [int(v) for v in totals([_base(40).batch(8), _base(3).batch(2)])] == expected


@fedsim.tf_computation(BATCHES)
def fast_sizes(dataset):
    return dataset.reduce(tf.constant(0, tf.int32), lambda s, b: s * 3 + tf.shape(b["x"])[0])


def test_a_reshuffling_dataset_reshuffles_from_call_to_call_as_iterating_it_does():
    dataset = _base(40).shuffle(40).batch(40)  # no seed: a new order on every iteration

    @fedsim.tf_computation(BATCHES)
    def first_labels(dataset):
        return dataset.reduce(tf.zeros([40], tf.int32), lambda s, b: b["y"])

    orders = [first_labels(dataset).tolist() for _ in range(4)]
    assert len({tuple(o) for o in orders}) > 1
    assert all(sorted(o) == sorted(_arrays(40)["y"].tolist()) for o in orders)


def test_a_computation_serialized_and_restored_keeps_its_fast_form():
    restored = fedsim.deserialize_computation(fedsim.serialize_computation(fast))
    assert restored.fast_graph() is not None
    make = PIPELINES["tutorial: shuffle(seed) batch map prefetch"]
    np.testing.assert_array_equal(restored(make(), W)["total"], fast(make(), W)["total"])


def test_without_the_loop_adapter_the_dataset_form_runs(monkeypatch):
    """The fallback when TensorFlow's private loop registry is gone: right, if slower."""
    monkeypatch.setattr(sequences, "enable_loops", lambda: False)

    @fedsim.tf_computation(BATCHES, fedsim.TensorType(tf.float32, [3]))
    def fresh(dataset, w):
        return _steps(dataset, w)

    make = PIPELINES["tutorial: shuffle(seed) batch map prefetch"]
    result = fresh(make(), W)
    assert fresh.fast_graph() is None
    np.testing.assert_array_equal(result["total"], fast(make(), W)["total"])


def test_sparse_tensors_in_a_sequence_keep_the_dataset_form():
    """TFF's sparse federated_select tutorial: a computation over datasets of tf.SparseTensor."""
    spec = collections.OrderedDict(x=tf.SparseTensorSpec([None, 5], tf.float32), y=tf.TensorSpec([None], tf.int32))
    sequence_type = fedsim.SequenceType(fedsim.to_type(spec))

    @fedsim.tf_computation(sequence_type)
    def weighted(dataset):
        return dataset.reduce(tf.constant(0.0), lambda s, e: s * 2.0 + tf.sparse.reduce_sum(e["x"])
                              + tf.cast(tf.reduce_sum(e["y"]), tf.float32))

    @fedsim.federated_computation(fedsim.FederatedType(sequence_type, fedsim.CLIENTS))
    def per_client(datasets):
        return fedsim.federated_map(weighted, datasets)

    def client(scale):
        rows = [collections.OrderedDict(
            x=tf.SparseTensor(indices=[[0, 1], [1, 3]], values=[scale * k, 1.0], dense_shape=[2, 5]),
            y=tf.constant([k, 1], tf.int32)) for k in (1, 2, 3)]
        return tf.data.Dataset.from_tensors(rows[0]).concatenate(tf.data.Dataset.from_tensors(rows[1])).concatenate(
            tf.data.Dataset.from_tensors(rows[2]))

    expected = []
    for scale in (1.0, 3.0):
        total = 0.0
        for k in (1, 2, 3):
            total = total * 2.0 + (scale * k + 1.0) + (k + 1)
        expected.append(total)
    assert [float(v) for v in per_client([client(1.0), client(3.0)])] == pytest.approx(expected)
    assert weighted.fast_graph() is None


@pytest.mark.parametrize("kind", sorted(PIPELINES))
def test_a_materialized_dataset_rebuilt_elsewhere_gives_the_same_elements(kind):
    """What another process (a Ray actor) rebuilds from shipped tensors: the same elements, and
    the fast form takes the shipped tensors without iterating the rebuilt dataset."""
    element = BATCHES.element
    shipped = [t.numpy() for t in sequences.materialize(PIPELINES[kind](), element)]
    rebuilt = sequences.dataset_of(shipped, element)
    expected = list(PIPELINES[kind]().as_numpy_iterator())
    got = list(rebuilt.as_numpy_iterator())
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        for name in ("x", "y"):
            np.testing.assert_array_equal(a[name], b[name])
    sequences.provide(rebuilt, element, [tf.convert_to_tensor(t) for t in shipped])
    np.testing.assert_array_equal(fast(rebuilt, W)["total"], fast(PIPELINES[kind](), W)["total"])
