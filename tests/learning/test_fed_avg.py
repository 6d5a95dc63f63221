"""FedAvg, FedProx and federated evaluation against independent plain Keras/numpy arithmetic."""

import collections

import keras
import numpy as np
import pytest
import tensorflow as tf

import fedsim
from fedsim import learning
from fedsim.learning import optimizers

FEATURES, CLASSES, ROUNDS = 5, 3, 3
INPUT_SPEC = collections.OrderedDict(x=tf.TensorSpec([None, FEATURES], tf.float32), y=tf.TensorSpec([None], tf.int32))


def _keras_model():
    return keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(CLASSES)])


def model_fn():
    return learning.from_keras_model(
        _keras_model(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        input_spec=INPUT_SPEC,
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )


@pytest.fixture(scope="module")
def client_arrays():
    rng = np.random.RandomState(3)
    clients = []
    for size in (7, 12, 20):  # unequal sizes make weighted and unweighted differ
        x = rng.randn(size, FEATURES).astype(np.float32)
        y = rng.randint(0, CLASSES, size).astype(np.int32)
        clients.append((x, y))
    return clients


def _datasets(client_arrays):
    return [tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=y)).batch(4) for x, y in client_arrays]


def reference_fed_avg(initial, client_arrays, weighted, server, client_lr=0.1, rounds=ROUNDS, proximal=0.0):
    """Plain Keras + numpy: same data order, same initial weights, same arithmetic."""
    model = _keras_model()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    server_variables = [keras.Variable(w) for w in initial]
    server_optimizer = keras.optimizers.SGD(1.0) if server == "sgd" else keras.optimizers.Adam(0.05)
    for _ in range(rounds):
        global_weights = [v.numpy() for v in server_variables]
        deltas, weights = [], []
        for x, y in client_arrays:
            for variable, value in zip(model.trainable_variables, global_weights):
                variable.assign(value)
            for start in range(0, len(x), 4):
                with tf.GradientTape() as tape:
                    loss = loss_fn(y[start:start + 4], model(x[start:start + 4], training=True))
                    if proximal:
                        loss += 0.5 * proximal * sum(tf.reduce_sum((v - w) ** 2) for v, w in zip(model.trainable_variables, global_weights))
                grads = tape.gradient(loss, model.trainable_variables)
                for variable, grad in zip(model.trainable_variables, grads):
                    variable.assign(variable - client_lr * grad)
            deltas.append([v.numpy() - w for v, w in zip(model.trainable_variables, global_weights)])
            weights.append(float(len(x)) if weighted else 1.0)
        total = sum(weights)
        mean_delta = [sum(w * d[i] for w, d in zip(weights, deltas)) / total for i in range(len(global_weights))]
        server_optimizer.apply_gradients(zip([tf.constant(-d) for d in mean_delta], server_variables))
    return [v.numpy() for v in server_variables]


def _run(process, datasets, rounds=ROUNDS):
    state = process.initialize()
    initial = [np.array(w) for w in process.get_model_weights(state).trainable]
    outputs = []
    for _ in range(rounds):
        output = process.next(state, datasets)
        state = output.state
        outputs.append(output)
    return initial, state, outputs


@pytest.mark.parametrize("weighted", [True, False], ids=["weighted", "unweighted"])
@pytest.mark.parametrize("server", ["sgd", "adam"])
def test_fed_avg_equals_plain_tensorflow(client_arrays, weighted, server):
    # The same initial model whatever ran before in this process: with Adam on the server, a
    # coordinate whose mean update is near zero moves by about +-lr on float rounding, so an
    # unlucky draw of the initial weights would compare rounding, not FedAvg.
    keras.utils.set_random_seed(2)
    server_optimizer_fn = (lambda: optimizers.build_sgdm(1.0)) if server == "sgd" else (lambda: optimizers.build_adam(0.05))
    builder = learning.build_weighted_fed_avg if weighted else learning.build_unweighted_fed_avg
    process = builder(model_fn, client_optimizer_fn=lambda: optimizers.build_sgdm(0.1), server_optimizer_fn=server_optimizer_fn)
    initial, state, _ = _run(process, _datasets(client_arrays))
    expected = reference_fed_avg(initial, client_arrays, weighted, server)
    for got, want, start in zip(process.get_model_weights(state).trainable, expected, initial):
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert np.abs(got - start).max() > 1e-3  # training moved the weights


def test_keras_client_optimizer_equals_functional(client_arrays):
    functional = learning.build_weighted_fed_avg(model_fn, lambda: optimizers.build_adam(0.01))
    with_keras = learning.build_weighted_fed_avg(model_fn, lambda: keras.optimizers.Adam(0.01))
    datasets = _datasets(client_arrays)
    state_a = functional.initialize()
    state_b = with_keras.set_model_weights(with_keras.initialize(), functional.get_model_weights(state_a))
    for _ in range(2):
        state_a = functional.next(state_a, datasets).state
        state_b = with_keras.next(state_b, datasets).state
    for a, b in zip(functional.get_model_weights(state_a).trainable, with_keras.get_model_weights(state_b).trainable):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_fed_prox(client_arrays):
    datasets = _datasets(client_arrays)
    client_fn = lambda: optimizers.build_sgdm(0.1)  # noqa: E731
    avg = learning.build_weighted_fed_avg(model_fn, client_fn)
    prox_zero = learning.build_weighted_fed_prox(model_fn, client_fn, proximal_strength=0.0)
    prox = learning.build_weighted_fed_prox(model_fn, client_fn, proximal_strength=0.5)
    state = avg.initialize()
    initial = [np.array(w) for w in state.global_model_weights.trainable]
    out_avg = avg.next(state, datasets).state
    out_zero = prox_zero.next(state, datasets).state
    out_prox = prox.next(state, datasets).state
    for a, z in zip(out_avg.global_model_weights.trainable, out_zero.global_model_weights.trainable):
        np.testing.assert_array_equal(a, z)
    expected = reference_fed_avg(initial, client_arrays, True, "sgd", rounds=1, proximal=0.5)
    for got, want in zip(out_prox.global_model_weights.trainable, expected):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_train_metrics_are_sum_then_finalize(client_arrays):
    process = learning.build_weighted_fed_avg(model_fn, lambda: optimizers.build_sgdm(0.0))  # no movement
    state = process.initialize()
    metrics = process.next(state, _datasets(client_arrays)).metrics
    train = metrics["client_work"]["train"]
    model = _keras_model()
    for variable, value in zip(model.trainable_variables, state.global_model_weights.trainable):
        variable.assign(value)
    x = np.concatenate([c[0] for c in client_arrays])
    y = np.concatenate([c[1] for c in client_arrays])
    accuracy = np.mean(np.argmax(model(x).numpy(), axis=1) == y)
    assert train["num_examples"] == len(x) and train["num_batches"] == 2 + 3 + 5
    np.testing.assert_allclose(train["sparse_categorical_accuracy"], accuracy, atol=1e-6)
    assert set(metrics) == {"distributor", "client_work", "aggregator", "finalizer"}


def test_federated_evaluation_equals_keras_evaluate(client_arrays):
    process = learning.build_weighted_fed_avg(model_fn, lambda: optimizers.build_sgdm(0.1))
    state = process.next(process.initialize(), _datasets(client_arrays)).state
    weights = process.get_model_weights(state)
    evaluate = learning.build_federated_evaluation(model_fn)
    metrics = evaluate(weights, _datasets(client_arrays))["eval"]
    model = _keras_model()
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=[keras.metrics.SparseCategoricalAccuracy()])
    for variable, value in zip(model.trainable_variables, weights.trainable):
        variable.assign(value)
    x = np.concatenate([c[0] for c in client_arrays])
    y = np.concatenate([c[1] for c in client_arrays])
    loss, accuracy = model.evaluate(x, y, batch_size=len(x), verbose=0)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["sparse_categorical_accuracy"], accuracy, atol=1e-6)


def test_next_is_serializable_and_traced_once(client_arrays):
    model_fn_calls = []

    def counting_model_fn():
        model_fn_calls.append(1)
        return model_fn()

    process = learning.build_weighted_fed_avg(counting_model_fn, lambda: optimizers.build_sgdm(0.1))
    calls_while_building = len(model_fn_calls)
    data = fedsim.serialize_computation(process.next)
    restored = fedsim.deserialize_computation(data)
    state = process.initialize()
    datasets = _datasets(client_arrays)
    direct = process.next(state, datasets).state.global_model_weights.trainable
    via_bytes = restored(state, datasets).state.global_model_weights.trainable
    for a, b in zip(direct, via_bytes):
        np.testing.assert_array_equal(a, b)
    # The first round with sliceable datasets traced the client work's sliced form (once, from the
    # same model_fn); after that no round or cohort size traces anything again.
    calls_after_first_round = len(model_fn_calls)
    assert calls_while_building > 0 and calls_after_first_round <= calls_while_building + 1
    for cohort in (datasets[:1], datasets, datasets[:2]):
        state = process.next(state, cohort).state
    assert len(model_fn_calls) == calls_after_first_round


def test_bad_inputs_get_clear_errors(client_arrays):
    process = learning.build_weighted_fed_avg(model_fn, lambda: optimizers.build_sgdm(0.1))
    state = process.initialize()
    wrong_spec = tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=np.zeros((4, 7), np.float32), y=np.zeros(4, np.int32))).batch(2)
    with pytest.raises(fedsim.TypeSignatureMismatchError) as error:
        process.next(state, [wrong_spec])
    assert "client 0" in str(error.value) and "float32[?,5]" in str(error.value)
    with pytest.raises(ValueError, match="empty list of clients"):
        process.next(state, [])

    def compiled_model_fn():
        model = _keras_model()
        model.compile(loss="mse")
        return learning.from_keras_model(model, loss=keras.losses.MeanSquaredError(), input_spec=INPUT_SPEC)

    with pytest.raises(ValueError, match="uncompiled Keras model"):
        learning.build_weighted_fed_avg(compiled_model_fn, lambda: optimizers.build_sgdm(0.1))

    def unreduced_loss_model_fn():
        return learning.from_keras_model(
            _keras_model(),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
            input_spec=INPUT_SPEC,
        )

    with pytest.raises(ValueError, match="loss must reduce to a scalar"):
        learning.build_weighted_fed_avg(unreduced_loss_model_fn, lambda: optimizers.build_sgdm(0.1))

    with pytest.raises(TypeError, match="must return a fedsim VariableModel"):
        learning.build_weighted_fed_avg(_keras_model, lambda: optimizers.build_sgdm(0.1))


def test_fed_sgd_equals_one_centralized_step(client_arrays):
    process = learning.build_fed_sgd(model_fn, server_optimizer_fn=lambda: optimizers.build_sgdm(0.5))
    state = process.initialize()
    initial = [np.array(w) for w in state.global_model_weights.trainable]
    new_weights = process.next(state, _datasets(client_arrays)).state.global_model_weights.trainable
    # Reference: pooled gradient = batch gradients weighted by batch size, over every client's batches.
    model = _keras_model()
    for variable, value in zip(model.trainable_variables, initial):
        variable.assign(value)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    total, count = [np.zeros_like(w) for w in initial], 0
    for x, y in client_arrays:
        for start in range(0, len(x), 4):
            with tf.GradientTape() as tape:
                loss = loss_fn(y[start:start + 4], model(x[start:start + 4]))
            n = len(y[start:start + 4])
            total = [t + g.numpy() * n for t, g in zip(total, tape.gradient(loss, model.trainable_variables))]
            count += n
    for got, w0, g in zip(new_weights, initial, total):
        np.testing.assert_allclose(got, w0 - 0.5 * g / count, atol=1e-6)


def test_fed_eval_process(client_arrays):
    training = learning.build_weighted_fed_avg(model_fn, lambda: optimizers.build_sgdm(0.1))
    trained = training.get_model_weights(training.next(training.initialize(), _datasets(client_arrays)).state)
    evaluation = learning.build_fed_eval(model_fn)
    state = evaluation.set_model_weights(evaluation.initialize(), trained)
    output = evaluation.next(state, _datasets(client_arrays))
    direct = learning.build_federated_evaluation(model_fn)(trained, _datasets(client_arrays))["eval"]
    assert output.metrics["client_work"]["eval"]["current_round_metrics"] == direct
    for a, b in zip(evaluation.get_model_weights(output.state).trainable, trained.trainable):
        np.testing.assert_array_equal(a, b)
