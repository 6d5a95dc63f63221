"""Batched datasets fed as tensors give exactly what the dataset form gives, and only when recognized."""

import collections

import numpy as np
import pytest
import tensorflow as tf

import fedsim
from fedsim.core import sequences

BATCHES = fedsim.SequenceType(collections.OrderedDict(
    x=fedsim.TensorType(tf.float32, [None, 3]), y=fedsim.TensorType(tf.int32, [None])))


def _arrays(n, seed=0):
    rng = np.random.RandomState(seed)
    return collections.OrderedDict(x=rng.randn(n, 3).astype(np.float32), y=rng.randint(0, 5, n).astype(np.int32))


def _traced_computations():
    traces = []

    @fedsim.tf_computation(BATCHES, fedsim.TensorType(tf.float32, [3]))
    def weighted_steps(dataset, w):
        traces.append(1)
        total = tf.zeros([3])
        count = tf.constant(0, tf.int32)
        for batch in dataset:  # autograph: a loop over batches, whatever feeds them
            total = total * 0.5 + tf.reduce_sum(batch["x"] * w, axis=0) + tf.cast(tf.reduce_sum(batch["y"]), tf.float32)
            count += tf.shape(batch["y"])[0]
        sizes = dataset.reduce(tf.constant(0, tf.int32), lambda s, b: s * 3 + tf.shape(b["x"])[0])
        return {"total": total, "count": count, "sizes": sizes}

    return weighted_steps, traces


def _plain_numpy(arrays, batch_size, w):
    total, count, sizes = np.zeros(3, np.float32), 0, 0
    for start in range(0, len(arrays["y"]), batch_size):
        x, y = arrays["x"][start:start + batch_size], arrays["y"][start:start + batch_size]
        total = total * np.float32(0.5) + (x * w).sum(0, dtype=np.float32) + np.float32(y.sum())
        count += len(y)
        sizes = sizes * 3 + len(y)
    return total, count, sizes


@pytest.mark.parametrize("examples, batch_size", [(23, 5), (20, 5), (1, 4), (7, 1), (0, 3)])
def test_sliced_and_dataset_forms_agree_and_match_numpy(examples, batch_size):
    computation, traces = _traced_computations()
    arrays, w = _arrays(examples), np.array([1.0, -2.0, 0.5], np.float32)
    recognized = tf.data.Dataset.from_tensor_slices(arrays).batch(batch_size)
    opaque = tf.data.Dataset.from_tensor_slices(arrays).map(lambda e: e).batch(batch_size)  # not recognized
    assert sequences.as_slices(recognized, BATCHES.element) is not None
    assert sequences.as_slices(opaque, BATCHES.element) is None
    via_dataset = computation(opaque, w)
    assert len(traces) == 1  # traced once; the sliced form is not needed yet
    via_slices = computation(recognized, w)
    assert len(traces) == 2  # the sliced form was traced on first use, from the same function
    computation(recognized, w)
    assert len(traces) == 2  # and only once
    total, count, sizes = _plain_numpy(arrays, batch_size, w)
    for result in (via_dataset, via_slices):
        np.testing.assert_allclose(result["total"], total, rtol=1e-5, atol=1e-5)
        assert result["count"] == count and result["sizes"] == sizes
    np.testing.assert_array_equal(via_slices["total"], via_dataset["total"])  # the same batches, the same arithmetic


def test_datasets_that_are_not_plain_slices_keep_the_dataset_form():
    computation, traces = _traced_computations()
    arrays, w = _arrays(10), np.ones(3, np.float32)
    for dataset in (tf.data.Dataset.from_tensor_slices(arrays).batch(4, drop_remainder=True),
                    tf.data.Dataset.from_tensor_slices(arrays).shuffle(10, seed=1, reshuffle_each_iteration=False).batch(4),
                    tf.data.Dataset.from_tensor_slices(arrays).batch(4).take(2)):
        assert sequences.as_slices(dataset, BATCHES.element) is None
        seen = {k: np.concatenate([batch[k] for batch in dataset.as_numpy_iterator()]) for k in arrays}
        total, count, sizes = _plain_numpy(seen, 4, w)
        result = computation(dataset, w)
        np.testing.assert_allclose(result["total"], total, rtol=1e-5, atol=1e-5)
        assert (result["count"], result["sizes"]) == (count, sizes)
    assert len(traces) == 1  # no sliced form was ever needed


def test_a_computation_using_other_dataset_methods_falls_back_to_its_dataset_form():
    traces = []

    @fedsim.tf_computation(BATCHES)
    def first_two(dataset):
        traces.append(1)
        return dataset.take(2).reduce(tf.constant(0, tf.int32), lambda s, b: s + tf.reduce_sum(b["y"]))

    arrays = _arrays(30)
    result = first_two(tf.data.Dataset.from_tensor_slices(arrays).batch(5))
    assert result == arrays["y"][:10].sum()
    assert len(traces) == 2  # the sliced trace was tried, refused (no take), and the dataset form ran


def test_a_computation_serialized_and_restored_runs_its_dataset_form():
    computation, _ = _traced_computations()
    restored = fedsim.deserialize_computation(fedsim.serialize_computation(computation))
    arrays, w = _arrays(9), np.ones(3, np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(arrays).batch(2)
    np.testing.assert_array_equal(restored(dataset, w)["total"], computation(dataset, w)["total"])
