import collections
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import fedsim

NUM_FEATURES, NUM_CLASSES = 4, 3
BATCH_TYPE = collections.OrderedDict(x=(tf.float32, [None, NUM_FEATURES]), y=(tf.int32, [None]))


def _build_model():
    return keras.Sequential([
        keras.Input((NUM_FEATURES,)),
        keras.layers.Dense(8, activation="relu"),
        keras.layers.Dense(NUM_CLASSES),
    ])


def _weight_types():
    return [fedsim.TensorType(tf.float32, v.shape) for v in _build_model().trainable_variables]


def _train(model, weights, batch, steps):
    """Sets `weights`, runs `steps` Adam steps on `batch`; returns (weights, loss)."""
    for variable, value in zip(model.trainable_variables, weights):
        variable.assign(value)
    optimizer = keras.optimizers.Adam(0.05)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    loss = None
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = loss_fn(batch["y"], model(batch["x"], training=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    return [tf.convert_to_tensor(v) for v in model.trainable_variables], loss


@pytest.fixture(scope="module")
def train_steps():
    @fedsim.tf_computation(_weight_types(), BATCH_TYPE)
    def train_steps(weights, batch):
        return _train(_build_model(), weights, batch, steps=5)

    return train_steps


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    batch = collections.OrderedDict(x=rng.randn(16, NUM_FEATURES).astype(np.float32), y=(np.arange(16) % NUM_CLASSES).astype(np.int32))
    weights = [rng.randn(*t.shape).astype(np.float32) * 0.3 for t in _weight_types()]
    return weights, batch


def test_keras_training_equals_eager_keras(train_steps, data):
    weights, batch = data
    expected_weights, expected_loss = _train(_build_model(), weights, batch, steps=5)
    got_weights, got_loss = train_steps(weights, batch)
    np.testing.assert_allclose(got_loss, expected_loss.numpy(), atol=1e-6)
    for got, expected in zip(got_weights, expected_weights):
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-6)
    # The weights moved: the training really ran.
    assert max(np.abs(g - w).max() for g, w in zip(got_weights, weights)) > 1e-3


def test_round_trip_in_a_fresh_process(train_steps, data, tmp_path, python_subprocess):
    weights, batch = data
    (tmp_path / "comp.bin").write_bytes(fedsim.serialize_computation(train_steps))
    np.savez(tmp_path / "inputs.npz", x=batch["x"], y=batch["y"], *weights)
    expected_weights, expected_loss = train_steps(weights, batch)
    python_subprocess(textwrap.dedent("""
        import sys, numpy as np
        import fedsim
        comp = fedsim.deserialize_computation(open("comp.bin", "rb").read())
        assert not any(m.startswith("tests") for m in sys.modules), "the defining module was imported"
        inputs = np.load("inputs.npz")
        weights = [inputs[f"arr_{i}"] for i in range(4)]
        new_weights, loss = comp(weights, {"x": inputs["x"], "y": inputs["y"]})
        np.savez("outputs.npz", loss, *new_weights)
    """), cwd=str(tmp_path))
    outputs = np.load(tmp_path / "outputs.npz")
    np.testing.assert_allclose(outputs["arr_0"], expected_loss, atol=1e-6)
    for i, expected in enumerate(expected_weights):
        np.testing.assert_allclose(outputs[f"arr_{i + 1}"], expected, atol=1e-6)


def test_keras_metric_is_pure_across_calls(data):
    weights, batch = data

    @fedsim.tf_computation(BATCH_TYPE)
    def accuracy(batch):
        metric = keras.metrics.SparseCategoricalAccuracy()
        model = _build_model()
        metric.update_state(batch["y"], model(batch["x"]))
        return metric.result(), metric.count

    first = accuracy(batch)
    second = accuracy(batch)
    third = accuracy(batch)
    assert first[1] == 16.0 and second[1] == 16.0 and third[1] == 16.0  # no count carried over
    assert first[0] == second[0] == third[0]


def test_variables_do_not_leak_between_calls():
    @fedsim.tf_computation(tf.float32)
    def bump(x):
        counter = tf.Variable(0.0)
        counter.assign_add(x)
        counter.assign_add(x)
        return tf.convert_to_tensor(counter)

    assert [bump(1.5) for _ in range(3)] == [3.0, 3.0, 3.0]


def test_traced_exactly_once():
    traces = []

    @fedsim.tf_computation(tf.int32)
    def double(x):
        traces.append(1)
        return x * 2

    results = [double(i) for i in range(1000)]
    assert results[999] == 1998
    assert len(traces) == 1


def test_polymorphic_computation_traces_once_per_type():
    traces = []

    @fedsim.tf_computation
    def square(x):
        traces.append(1)
        return x * x

    assert square(np.float32(3.0)) == 9.0
    assert square(np.float32(4.0)) == 16.0
    assert square(np.arange(3, dtype=np.int64)).tolist() == [0, 1, 4]
    assert len(traces) == 2


def test_datasets_in_and_out():
    element = collections.OrderedDict(x=(tf.float32, [None]))

    @fedsim.tf_computation(fedsim.SequenceType(element))
    def summarize(dataset):
        total = tf.constant(0.0)
        batches = tf.constant(0)
        for batch in dataset:
            total += tf.reduce_sum(batch["x"])
            batches += 1
        return {"total": total, "batches": batches, "doubled": dataset.map(lambda b: b["x"] * 2.0)}

    assert str(summarize.type_signature) == "(<x=float32[?]>* -> <total=float32,batches=int32,doubled=float32[?]*>)"
    values = np.arange(10, dtype=np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=values)).batch(3)
    result = summarize(dataset)
    assert result["total"] == values.sum() and result["batches"] == 4
    assert isinstance(result["doubled"], tf.data.Dataset)
    np.testing.assert_array_equal(np.concatenate(list(result["doubled"].as_numpy_iterator())), values * 2)


def test_nested_structures_keep_containers():
    Pair = collections.namedtuple("Pair", ["left", "right"])

    @fedsim.tf_computation(Pair(tf.float32, [tf.int32, tf.int32]))
    def swap(pair):
        return Pair(left=pair.right, right=pair.left)

    result = swap(Pair(np.float32(1.5), [np.int32(1), np.int32(2)]))
    assert isinstance(result, Pair)
    assert result.right == 1.5 and list(result.left) == [1, 2]


def test_no_parameter_computation():
    @fedsim.tf_computation
    def zeros():
        return tf.zeros([2, 3])

    assert str(zeros.type_signature) == "( -> float32[2,3])"
    np.testing.assert_array_equal(zeros(), np.zeros((2, 3), np.float32))


def test_federated_types_are_refused_in_tf_computations():
    with pytest.raises(TypeError, match="federated_computation"):
        fedsim.tf_computation(lambda x: x, fedsim.FederatedType(tf.float32, fedsim.SERVER))


def test_python_callbacks_are_refused_with_a_reason():
    with pytest.raises(TypeError, match="cannot be serialized or run in another process"):
        fedsim.tf_computation(lambda x: tf.py_function(lambda v: v, [x], tf.float32), tf.float32)
