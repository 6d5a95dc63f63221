"""Keras files for the global model, and Keras models with several inputs and outputs."""

import collections

import keras
import numpy as np
import pytest
import tensorflow as tf

from fedsim import learning
from fedsim.learning import models, optimizers
from tests.learning.test_fed_avg import _datasets, _keras_model, client_arrays, model_fn  # noqa: F401 - fixture


def test_save_and_load_the_global_model(client_arrays, tmp_path):  # noqa: F811
    process = learning.build_weighted_fed_avg(model_fn, lambda: optimizers.build_sgdm(0.1))
    state = process.next(process.initialize(), _datasets(client_arrays)).state
    weights = process.get_model_weights(state)
    path = models.save_keras_model(weights, _keras_model(), tmp_path / "global.keras")
    loaded = keras.models.load_model(path)
    x = client_arrays[0][0]
    reference = _keras_model()
    for variable, value in zip(reference.trainable_variables, weights.trainable):
        variable.assign(value)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), reference(x).numpy(), atol=1e-6)
    restored = models.load_model_weights(path)
    for a, b in zip(restored.trainable, weights.trainable):
        np.testing.assert_array_equal(a, b)
    resumed = process.set_model_weights(state, restored)
    assert process.next(resumed, _datasets(client_arrays)).metrics["client_work"]["train"]["num_examples"] == 39
    with pytest.raises(ValueError, match="must end in .keras"):
        models.save_keras_model(weights, _keras_model(), tmp_path / "global.h5")
    with pytest.raises(FileNotFoundError, match="no saved Keras model"):
        models.load_model_weights(tmp_path / "missing.keras")


MULTI_SPEC = collections.OrderedDict(
    x=collections.OrderedDict(image=tf.TensorSpec([None, 4], tf.float32), meta=tf.TensorSpec([None, 2], tf.float32)),
    y=(tf.TensorSpec([None], tf.int32), tf.TensorSpec([None, 1], tf.float32)),
)


def _multi_keras_model():
    image = keras.Input((4,), name="image")
    meta = keras.Input((2,), name="meta")
    hidden = keras.layers.Dense(5, activation="relu")(keras.layers.Concatenate()([image, meta]))
    return keras.Model({"image": image, "meta": meta}, [keras.layers.Dense(3)(hidden), keras.layers.Dense(1)(hidden)])


LOSSES = [keras.losses.SparseCategoricalCrossentropy(from_logits=True), keras.losses.MeanSquaredError()]


def _multi_model_fn():
    return learning.from_keras_model(_multi_keras_model(), loss=LOSSES, input_spec=MULTI_SPEC, loss_weights=[1.0, 0.5])


def test_several_inputs_and_outputs():
    rng = np.random.RandomState(5)
    arrays = []
    for n in (6, 9):
        x = collections.OrderedDict(image=rng.randn(n, 4).astype(np.float32), meta=rng.randn(n, 2).astype(np.float32))
        y = (rng.randint(0, 3, n).astype(np.int32), rng.randn(n, 1).astype(np.float32))
        arrays.append((x, y))
    datasets = [tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=y)).batch(n) for x, y in arrays]
    process = learning.build_weighted_fed_avg(_multi_model_fn, lambda: optimizers.build_sgdm(0.1))
    state = process.initialize()
    weights = process.get_model_weights(state)
    metrics = learning.build_federated_evaluation(_multi_model_fn)(weights, datasets)["eval"]
    model = _multi_keras_model()
    for variable, value in zip(model.trainable_variables, weights.trainable):
        variable.assign(value)
    total, count = 0.0, 0
    for x, (labels, targets) in arrays:
        logits, regression = model(x)
        loss = LOSSES[0](labels, logits) + 0.5 * LOSSES[1](targets, regression)
        total += float(loss) * len(labels)
        count += len(labels)
    np.testing.assert_allclose(metrics["loss"], total / count, rtol=1e-5)
    new_state = process.next(state, datasets).state
    assert any(np.abs(a - b).max() > 1e-4 for a, b in zip(new_state.global_model_weights.trainable, weights.trainable))


def test_metrics_as_constructors_equal_metric_objects(client_arrays):  # noqa: F811
    def constructor_model_fn():
        return learning.from_keras_model(
            _keras_model(),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            input_spec=model_fn().input_spec,
            metrics=[keras.metrics.SparseCategoricalAccuracy],
        )

    weights = learning.build_weighted_fed_avg(model_fn, lambda: optimizers.build_sgdm(0.1)).initialize().global_model_weights
    by_object = learning.build_federated_evaluation(model_fn)(weights, _datasets(client_arrays))
    by_constructor = learning.build_federated_evaluation(constructor_model_fn)(weights, _datasets(client_arrays))
    assert by_object == by_constructor
    with pytest.raises(TypeError, match="Keras metric objects or constructors"):
        learning.from_keras_model(_keras_model(), loss=keras.losses.MeanSquaredError(), input_spec=model_fn().input_spec, metrics=["accuracy"])
