"""TFF's learning spellings: functional models, Keras optimizers at the server, RNG state, fed_eval's totals.

Each test is written from TFF's documented behaviour and checked against plain Keras/numpy.
"""

import collections

import keras
import numpy as np
import pytest
import tensorflow as tf

import fedsim as tff
from tests.learning.test_fed_avg import CLASSES, FEATURES, _datasets, _keras_model, reference_fed_avg

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
PAIR_SPEC = collections.OrderedDict(x=tf.TensorSpec([None, FEATURES], tf.float32), y=tf.TensorSpec([None], tf.int32))


@pytest.fixture(scope="module")
def client_arrays():
    rng = np.random.RandomState(11)
    return [(rng.randn(n, FEATURES).astype(np.float32), rng.randint(0, CLASSES, n).astype(np.int32)) for n in (6, 9, 13)]


def _functional_model():
    return tff.learning.models.functional_model_from_keras(
        _keras_model(), LOSS, PAIR_SPEC, collections.OrderedDict(accuracy=keras.metrics.SparseCategoricalAccuracy))


def test_functional_model_predicts_as_the_keras_model_on_given_weights():
    functional = _functional_model()
    rng = np.random.RandomState(0)
    trainable = [rng.randn(*w.shape).astype(np.float32) for w in functional.initial_weights[0]]
    x = rng.randn(5, FEATURES).astype(np.float32)
    keras_model = _keras_model()
    keras_model.set_weights(trainable)
    got = functional.predict_on_batch((trainable, ()), x, training=False)
    np.testing.assert_allclose(np.asarray(got), keras_model(x).numpy(), atol=1e-6)
    y = rng.randint(0, CLASSES, 5).astype(np.int32)
    assert float(functional.loss(got, y)) == pytest.approx(float(LOSS(y, keras_model(x))), rel=1e-6)


def test_functional_metric_fns_equal_the_keras_metric():
    initialize, update, finalize = tff.learning.metrics.create_functional_metric_fns(keras.metrics.SparseCategoricalAccuracy)
    state = initialize()
    labels = [np.array([0, 1, 2]), np.array([2, 2])]
    logits = [np.eye(3, dtype=np.float32)[[0, 2, 2]], np.eye(3, dtype=np.float32)[[2, 0]]]
    reference = keras.metrics.SparseCategoricalAccuracy()
    for y, p in zip(labels, logits):
        state = update(state, y, tff.learning.models.BatchOutput(loss=None, predictions=p, num_examples=len(y)))
        reference.update_state(y, p)
    assert float(finalize(state)["sparse_categorical_accuracy"]) == pytest.approx(float(reference.result()))  # 3 of 5


def test_fed_avg_takes_a_functional_model_and_keras_optimizers(client_arrays):
    """TFF 0.86 tutorial style: a FunctionalModel as model_fn, Keras optimizer constructors at both ends."""
    process = tff.learning.algorithms.build_weighted_fed_avg(
        _functional_model(),
        client_optimizer_fn=lambda: keras.optimizers.SGD(0.1),
        server_optimizer_fn=lambda: keras.optimizers.Adam(0.05),
    )
    state = process.initialize()
    initial = [np.array(w) for w in process.get_model_weights(state).trainable]
    for _ in range(3):
        output = process.next(state, _datasets(client_arrays))
        state = output.state
    expected = reference_fed_avg(initial, client_arrays, weighted=True, server="adam")
    for got, want in zip(process.get_model_weights(state).trainable, expected):
        np.testing.assert_allclose(got, want, atol=1e-5)
    train = output.metrics["client_work"]["train"]
    assert list(train) == ["loss", "num_examples", "num_batches", "accuracy"]
    assert train["num_examples"] == sum(len(x) for x, _ in client_arrays)


def test_keras_optimizer_conversion_follows_keras_and_refuses_what_it_cannot_do():
    rng = np.random.RandomState(1)
    weights = [rng.randn(3).astype(np.float32), rng.randn(2, 2).astype(np.float32)]
    gradients = [[rng.randn(*w.shape).astype(np.float32) for w in weights] for _ in range(4)]
    for keras_optimizer in (keras.optimizers.SGD(0.1, momentum=0.9), keras.optimizers.Adam(0.01),
                            keras.optimizers.Adagrad(0.1), keras.optimizers.RMSprop(0.01)):
        functional = tff.learning.optimizers.from_keras_optimizer(keras_optimizer)
        variables = [keras.Variable(w) for w in weights]
        state, values = functional.initialize([tf.TensorSpec(w.shape) for w in weights]), list(weights)
        for step in gradients:
            keras_optimizer.apply_gradients(zip([tf.constant(g) for g in step], variables))
            state, values = functional.next(state, values, step)
        for got, want in zip(values, variables):
            np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=1e-6, err_msg=type(keras_optimizer).__name__)
    with pytest.raises(ValueError, match="nesterov"):
        tff.learning.optimizers.from_keras_optimizer(keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True))
    with pytest.raises(ValueError, match="Nadam"):
        tff.learning.optimizers.from_keras_optimizer(keras.optimizers.Nadam())


def _dropout_model():
    return keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(8), keras.layers.Dropout(0.5), keras.layers.Dense(CLASSES)])


def test_rng_state_is_not_a_model_weight():
    keras_model = _dropout_model()
    weights = tff.learning.models.ModelWeights.from_model(keras_model)
    assert len(weights.trainable) == 4 and weights.non_trainable == []
    assert any("seed_generator" in v.path for v in keras_model.non_trainable_variables)  # Keras does keep one

    def model_fn():
        return tff.learning.models.from_keras_model(_dropout_model(), loss=LOSS, input_spec=PAIR_SPEC)

    process = tff.learning.algorithms.build_weighted_fed_avg(model_fn, lambda: keras.optimizers.SGD(0.1))
    state = process.initialize()
    w0 = [np.array(w) for w in process.get_model_weights(state).trainable]
    # TFF's benchmark pattern: set the weights with an empty non-trainable list.
    state = process.set_model_weights(state, tff.learning.models.ModelWeights(trainable=w0, non_trainable=[]))
    rng = np.random.RandomState(2)
    data = [tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
        x=rng.randn(8, FEATURES).astype(np.float32), y=rng.randint(0, CLASSES, 8).astype(np.int32))).batch(4)]
    assert np.isfinite(process.next(state, data).metrics["client_work"]["train"]["loss"])


def test_each_call_draws_its_own_dropout_masks():
    """Every call of a computation starts from fresh variables; the RNG state must not repeat."""

    @tff.tf_computation(tf.TensorSpec([4, FEATURES], tf.float32))
    def dropped(x):
        model = tff.learning.models.from_keras_model(_dropout_model(), loss=LOSS, input_spec=PAIR_SPEC)
        return model.predict_on_batch(x, training=True)

    x = np.ones([4, FEATURES], np.float32)
    first, second = dropped(x), dropped(x)
    assert not np.allclose(first, second)


def test_from_keras_model_with_a_sample_batch_and_tff_argument_order():
    sample = collections.OrderedDict(x=np.zeros([3, FEATURES], np.float32), y=np.zeros([3], np.int64))
    model = tff.learning.models.from_keras_model(_keras_model(), sample, loss=LOSS)
    assert model.input_spec["x"] == tf.TensorSpec([None, FEATURES], tf.float32)
    assert model.input_spec["y"] == tf.TensorSpec([None], tf.int64)
    positional = tff.learning.models.from_keras_model(_keras_model(), LOSS, PAIR_SPEC, None, [keras.metrics.SparseCategoricalAccuracy()])
    assert "sparse_categorical_accuracy" in positional.metric_finalizers()
    with pytest.raises(TypeError, match="needs a loss"):
        tff.learning.models.from_keras_model(_keras_model(), input_spec=PAIR_SPEC)


def test_model_weights_from_model_are_assignable_variables():
    """simple_fedavg's pattern: map_structure(lambda v, t: v.assign(t), from_model(model), weights)."""
    keras_model = _keras_model()
    target = [np.full(v.shape, 0.5, np.float32) for v in keras_model.trainable_variables]
    variables = tff.learning.models.ModelWeights.from_model(keras_model)
    tf.nest.map_structure(lambda v, t: v.assign(t), variables, tff.learning.models.ModelWeights(target, []))
    for variable, value in zip(keras_model.trainable_variables, target):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_fed_eval_reports_current_and_total_rounds_metrics(client_arrays):
    def model_fn():
        return tff.learning.models.from_keras_model(_keras_model(), loss=LOSS, input_spec=PAIR_SPEC)

    evaluation = tff.learning.algorithms.build_fed_eval(model_fn)
    state = evaluation.initialize()
    keras_model = _keras_model()
    keras_model.set_weights([np.asarray(w) for w in state.global_model_weights.trainable])
    rounds = [client_arrays[:2], client_arrays[2:]]
    for cohort in rounds:
        output = evaluation.next(state, _datasets(cohort))
        state = output.state
    metrics = output.metrics["client_work"]["eval"]
    x_last = np.concatenate([x for x, _ in rounds[1]])
    x_all = np.concatenate([x for x, _ in client_arrays])
    assert metrics["current_round_metrics"]["num_examples"] == len(x_last)
    assert metrics["total_rounds_metrics"]["num_examples"] == len(x_all)
    # The example-weighted loss over every client evaluated, by plain Keras on the pooled batches.
    batch_losses, batch_sizes = [], []
    for x, y in client_arrays:
        for start in range(0, len(x), 4):
            batch_losses.append(float(LOSS(y[start:start + 4], keras_model(x[start:start + 4]))))
            batch_sizes.append(len(x[start:start + 4]))
    expected = np.average(batch_losses, weights=batch_sizes)
    assert metrics["total_rounds_metrics"]["loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["current_round_metrics"]["loss"] != pytest.approx(expected, rel=1e-5)  # one round's clients differ


def test_user_metrics_may_be_named_like_fedsims_counters(client_arrays):
    """TFF's tutorials name a Keras metric `loss`: the user's metric is what `loss` reports."""

    class CountTwice(keras.metrics.Sum):  # a user's `num_examples` that is not fedsim's counter
        def update_state(self, y_true, y_pred, sample_weight=None):
            return super().update_state(2.0 * tf.cast(tf.shape(y_true)[0], tf.float32))

    functional = tff.learning.models.functional_model_from_keras(
        _keras_model(), keras.losses.SparseCategoricalCrossentropy(from_logits=True), PAIR_SPEC,
        metrics_constructor=collections.OrderedDict(
            loss=lambda: keras.metrics.SparseCategoricalCrossentropy(from_logits=True),
            accuracy=keras.metrics.SparseCategoricalAccuracy,
            num_examples=lambda: CountTwice(name="num_examples")))
    evaluation = tff.learning.algorithms.build_fed_eval(functional)
    state = evaluation.initialize()
    metrics = evaluation.next(state, _datasets(client_arrays)).metrics["client_work"]["eval"]["current_round_metrics"]
    keras_model = _keras_model()
    keras_model.set_weights([np.asarray(w) for w in state.global_model_weights.trainable])
    x = np.concatenate([x for x, _ in client_arrays])
    y = np.concatenate([y for _, y in client_arrays])
    reference_loss = keras.metrics.SparseCategoricalCrossentropy(from_logits=True)
    reference_loss.update_state(y, keras_model(x))
    reference_accuracy = keras.metrics.SparseCategoricalAccuracy()
    reference_accuracy.update_state(y, keras_model(x))
    assert metrics["loss"] == pytest.approx(float(reference_loss.result()), rel=1e-5)
    assert metrics["accuracy"] == pytest.approx(float(reference_accuracy.result()), rel=1e-6)
    assert metrics["num_examples"] == 2 * len(y)  # the user's metric, not the counter
    training = tff.learning.algorithms.build_weighted_fed_avg(functional, tff.learning.optimizers.build_sgdm(0.1))
    train_metrics = training.next(training.initialize(), _datasets(client_arrays)).metrics["client_work"]["train"]
    assert set(train_metrics) >= {"loss", "accuracy", "num_examples"} and train_metrics["num_examples"] == 2 * len(y)
