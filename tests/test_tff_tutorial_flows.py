"""Short versions of TFF tutorial flows, in TFF's spelling with `import fedsim as tff`, on small synthetic data.

Each flow follows its tutorial's calls (TFF v0.86-0.89 docs) and checks the numbers against numpy
or plain Keras where the tutorial computes something checkable.
"""

import collections

import keras
import numpy as np
import pytest
import tensorflow as tf

import fedsim as tff


def _emnist_like(num_clients=4, seed=0):
    """Stand-in for tff.simulation.datasets.emnist.load_data(): pixels/label per client."""
    rng = np.random.RandomState(seed)
    data = {}
    for i in range(num_clients):
        n = 10 + 3 * i
        data[f"client_{i}"] = collections.OrderedDict(
            label=rng.randint(0, 10, n).astype(np.int32), pixels=rng.rand(n, 28, 28).astype(np.float32))
    return tff.simulation.datasets.TestClientData(data)


def test_flow_federated_learning_for_image_classification():
    """Image classification: preprocess ClientData, from_keras_model, FedAvg with Keras optimizers, evaluation."""
    emnist_train = _emnist_like()

    def preprocess(dataset):
        def batch_format_fn(element):
            return collections.OrderedDict(x=tf.reshape(element["pixels"], [-1, 784]), y=tf.reshape(element["label"], [-1, 1]))
        return dataset.repeat(1).shuffle(100, seed=1).batch(5).map(batch_format_fn)

    federated_train_data = [preprocess(emnist_train.create_tf_dataset_for_client(x)) for x in emnist_train.client_ids[:3]]
    preprocessed_example_dataset = federated_train_data[0]

    def create_keras_model():
        return tf.keras.models.Sequential([tf.keras.layers.InputLayer(input_shape=(784,)),
                                           tf.keras.layers.Dense(10, kernel_initializer="zeros"), tf.keras.layers.Softmax()])

    def model_fn():
        return tff.learning.models.from_keras_model(
            create_keras_model(), input_spec=preprocessed_example_dataset.element_spec,
            loss=tf.keras.losses.SparseCategoricalCrossentropy(), metrics=[tf.keras.metrics.SparseCategoricalAccuracy()])

    training_process = tff.learning.algorithms.build_weighted_fed_avg(
        model_fn, client_optimizer_fn=lambda: tf.keras.optimizers.SGD(learning_rate=0.02),
        server_optimizer_fn=lambda: tf.keras.optimizers.SGD(learning_rate=1.0))
    assert str(training_process.initialize.type_signature).startswith("( -> <global_model_weights=<trainable=<float32[784,10],float32[10]>")
    train_state = training_process.initialize()
    result = training_process.next(train_state, federated_train_data)
    train_state, train_metrics = result.state, result.metrics
    assert train_metrics["client_work"]["train"]["num_examples"] == 10 + 13 + 16
    assert set(train_metrics) == {"distributor", "client_work", "aggregator", "finalizer"}
    assert train_metrics["finalizer"]["update_non_finite"] == 0

    evaluation_process = tff.learning.algorithms.build_fed_eval(model_fn)
    initial = evaluation_process.next(evaluation_process.initialize(), federated_train_data).metrics["client_work"]["eval"]
    # The zero-initialized model predicts uniformly: its loss is log(10) exactly.
    assert initial["current_round_metrics"]["loss"] == pytest.approx(np.log(10.0), rel=1e-5)
    evaluation_state = evaluation_process.set_model_weights(evaluation_process.initialize(), training_process.get_model_weights(train_state))
    trained = evaluation_process.next(evaluation_state, federated_train_data).metrics["client_work"]["eval"]["current_round_metrics"]
    assert trained["loss"] < initial["current_round_metrics"]["loss"]


def test_flow_custom_federated_algorithms_part_1():
    """Temperature sensors: placements, types printed as TFF prints them, sequences as lists."""
    assert str(tff.FederatedType(np.float32, tff.CLIENTS)) == "{float32}@CLIENTS"

    @tff.federated_computation(tff.FederatedType(np.float32, tff.CLIENTS))
    def get_average_temperature(sensor_readings):
        return tff.federated_mean(sensor_readings)

    assert str(get_average_temperature.type_signature) == "({float32}@CLIENTS -> float32@SERVER)"
    assert get_average_temperature([68.5, 70.3, 69.8]) == pytest.approx(69.533333)

    @tff.tensorflow.computation(tff.SequenceType(np.float32))
    def get_local_temperature_average(local_temperatures):
        sum_and_count = local_temperatures.reduce((0.0, 0), lambda x, y: (x[0] + y, x[1] + 1))
        return sum_and_count[0] / tf.cast(sum_and_count[1], np.float32)

    @tff.federated_computation(tff.FederatedType(tff.SequenceType(np.float32), tff.CLIENTS))
    def get_global_temperature_average(sensor_readings):
        return tff.federated_mean(tff.federated_map(get_local_temperature_average, sensor_readings))

    assert str(get_global_temperature_average.type_signature) == "({float32*}@CLIENTS -> float32@SERVER)"
    assert get_global_temperature_average([[68.0, 70.0], [71.0], [68.0, 72.0, 70.0]]) == pytest.approx(70.0)


def test_flow_building_your_own_federated_learning_algorithm():
    """A functional model, a tf.function client update with a functional optimizer, an IterativeProcess."""
    emnist_train = _emnist_like(seed=2)

    def batch_format_fn(element):  # as the tutorial: labels become a column ([-1, 1], rank 2)
        return (tf.reshape(element["pixels"], [-1, 784]), tf.reshape(element["label"], [-1, 1]))

    def preprocess(dataset):  # the tutorial's pipeline: repeat, seeded shuffle, batch, map, prefetch
        return dataset.repeat(2).shuffle(20, seed=1).batch(8).map(batch_format_fn).prefetch(2)

    federated_train_data = [preprocess(emnist_train.create_tf_dataset_for_client(x)) for x in emnist_train.client_ids[:3]]
    keras_model = tf.keras.models.Sequential([tf.keras.layers.InputLayer(input_shape=(784,)), tf.keras.layers.Dense(10)])
    tff_model = tff.learning.models.functional_model_from_keras(
        keras_model, loss_fn=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        input_spec=federated_train_data[0].element_spec,
        metrics_constructor=collections.OrderedDict(accuracy=tf.keras.metrics.SparseCategoricalAccuracy))

    @tf.function
    def client_update(model, dataset, server_weights, client_optimizer):
        client_weights = server_weights
        optimizer_state = client_optimizer.initialize(tf.nest.map_structure(lambda x: tf.TensorSpec(x.shape, x.dtype), client_weights))
        for batch in dataset:
            x, y = batch
            with tf.GradientTape() as tape:
                tape.watch(client_weights)
                outputs = model.predict_on_batch(model_weights=(client_weights, ()), x=x, training=True)
                loss = model.loss(output=outputs, label=y)
            grads = tape.gradient(loss, client_weights)
            optimizer_state, client_weights = client_optimizer.next(optimizer_state, client_weights, grads)
        return client_weights

    @tff.tensorflow.computation
    def server_init():
        return tff_model.initial_weights[0]

    tf_dataset_type = tff.SequenceType(tff.tensorflow.to_type(federated_train_data[0].element_spec))
    model_weights_type = server_init.type_signature.result

    @tff.tensorflow.computation(tf_dataset_type, model_weights_type)
    def client_update_fn(federated_dataset, server_weights):
        return client_update(tff_model, federated_dataset, server_weights, tff.learning.optimizers.build_sgdm(learning_rate=0.1))

    @tff.tensorflow.computation(model_weights_type)
    def server_update_fn(mean_client_weights):
        return mean_client_weights

    @tff.federated_computation
    def initialize_fn():
        return tff.federated_eval(server_init, tff.SERVER)

    federated_server_type = tff.FederatedType(model_weights_type, tff.SERVER)
    federated_dataset_type = tff.FederatedType(tf_dataset_type, tff.CLIENTS)

    @tff.federated_computation(federated_server_type, federated_dataset_type)
    def next_fn(server_weights, federated_dataset):
        server_weights_at_client = tff.federated_broadcast(server_weights)
        client_weights = tff.federated_map(client_update_fn, (federated_dataset, server_weights_at_client))
        mean_client_weights = tff.federated_mean(client_weights)
        return tff.federated_map(server_update_fn, mean_client_weights)

    federated_algorithm = tff.templates.IterativeProcess(initialize_fn=initialize_fn, next_fn=next_fn)
    state = federated_algorithm.initialize()
    new_state = federated_algorithm.next(state, federated_train_data)

    # The same arithmetic in plain Keras + numpy: SGD on each client, unweighted mean.
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    reference = keras.models.clone_model(keras_model)
    finals = []
    # fresh datasets: a seeded shuffle's first iteration is the one the round saw
    for dataset in [preprocess(emnist_train.create_tf_dataset_for_client(x)) for x in emnist_train.client_ids[:3]]:
        reference.set_weights([np.asarray(w) for w in state])
        for x, y in dataset:
            with tf.GradientTape() as tape:
                loss = loss_fn(y, reference(x, training=True))
            for variable, gradient in zip(reference.trainable_variables, tape.gradient(loss, reference.trainable_variables)):
                variable.assign_sub(0.1 * gradient)
        finals.append([v.numpy() for v in reference.trainable_variables])
    for got, *per_client in zip(new_state, *finals):
        np.testing.assert_allclose(got, np.mean(per_client, axis=0), atol=1e-5)


def test_flow_tuning_recommended_aggregators():
    """Recommended aggregators plugged into FedAvg, as the tutorial compares them."""
    def model_fn():
        model = tf.keras.models.Sequential([tf.keras.layers.InputLayer(input_shape=(5,)), tf.keras.layers.Dense(3)])
        return tff.learning.models.from_keras_model(
            model, loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            input_spec=(tf.TensorSpec([None, 5], tf.float32), tf.TensorSpec([None], tf.int32)))

    rng = np.random.RandomState(4)
    data = [tf.data.Dataset.from_tensor_slices((rng.randn(9, 5).astype(np.float32), rng.randint(0, 3, 9).astype(np.int32))).batch(3)
            for _ in range(3)]
    clipping_norm = tff.aggregators.PrivateQuantileEstimationProcess.no_noise(initial_estimate=1.0, target_quantile=0.8, learning_rate=0.2)
    for aggregator in (tff.aggregators.MeanFactory(), tff.aggregators.clipping_factory(clipping_norm, tff.aggregators.MeanFactory()),
                       tff.learning.robust_aggregator(zeroing=True, clipping=False), tff.learning.compression_aggregator()):
        process = tff.learning.algorithms.build_weighted_fed_avg(
            model_fn, client_optimizer_fn=tff.learning.optimizers.build_sgdm(0.1), model_aggregator=aggregator)
        state = process.initialize()
        losses = []
        for _ in range(3):
            output = process.next(state, data)
            state = output.state
            losses.append(output.metrics["client_work"]["train"]["loss"])
        assert losses[-1] < losses[0]


def test_flow_working_with_client_data():
    """ClientData: ids, element types, datasets from ids inside the round (dataset computation)."""
    client_data = _emnist_like(num_clients=5, seed=6)
    assert len(client_data.client_ids) == 5
    assert set(client_data.element_type_structure) == {"label", "pixels"}

    def preprocess(dataset):
        return dataset.batch(4).map(lambda e: collections.OrderedDict(x=tf.reshape(e["pixels"], [-1, 784]), y=e["label"]))

    preprocessed = client_data.preprocess(preprocess)

    def model_fn():
        model = tf.keras.models.Sequential([tf.keras.layers.InputLayer(input_shape=(784,)), tf.keras.layers.Dense(10)])
        return tff.learning.models.from_keras_model(
            model, loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            input_spec=preprocessed.element_type_structure)

    learning_process = tff.learning.algorithms.build_weighted_fed_avg(model_fn, tff.learning.optimizers.build_sgdm(0.05))
    by_id = tff.simulation.compose_dataset_computation_with_learning_process(preprocessed.dataset_computation, learning_process)
    assert str(by_id.next.type_signature.parameter[1]) == "{str}@CLIENTS"
    state = by_id.initialize()
    ids = client_data.client_ids[:3]
    from_ids = by_id.next(state, ids)
    from_datasets = learning_process.next(state, [preprocessed.create_tf_dataset_for_client(i) for i in ids])
    for a, b in zip(by_id.get_model_weights(from_ids.state).trainable, learning_process.get_model_weights(from_datasets.state).trainable):
        np.testing.assert_allclose(a, b, atol=1e-6)
    keras_style = tff.simulation.models.mnist.keras_dataset_from_emnist(client_data.create_tf_dataset_for_client(ids[0]))
    assert keras_style.element_spec["x"].shape == (784,)


def test_flow_federated_select():
    """Sending different data to particular clients with tff.federated_select (strings by key)."""
    list_of_strings_type = tff.TensorType(tf.string, [None])
    keys_type = tff.TensorType(tf.int32, [2])

    @tff.tensorflow.computation(list_of_strings_type, tf.int32)
    def select_fn(list_of_strings, key):
        return tf.gather(list_of_strings, key)

    @tff.tensorflow.computation(list_of_strings_type)
    def length(list_of_strings):
        return tf.shape(list_of_strings)[0]

    @tff.federated_computation(tff.types.type_at_server(list_of_strings_type), tff.types.type_at_clients(keys_type))
    def broadcast_based_on_keys(list_of_strings_at_server, keys_at_clients):
        max_key = tff.federated_map(length, list_of_strings_at_server)
        return tff.federated_select(keys_at_clients, max_key, list_of_strings_at_server, select_fn)

    client_keys = [tf.constant([0, 2]), tf.constant([3, 1]), tf.constant([2, 2])]
    for strings in (tf.constant(["a", "b", "c", "d"]), ["a", "b", "c", "d"]):  # a Python list where the type says tensor
        received = broadcast_based_on_keys(strings, client_keys)
        assert [[s.decode() for s in d.as_numpy_iterator()] for d in received] == [["a", "c"], ["d", "b"], ["c", "c"]]


# examples/simple_fedavg, in fedsim's own words: a hand-written FedAvg over tff.learning's
# VariableModel, Keras optimizers used as in Keras 2 (`variables()`, `apply_gradients(name=)`),
# state as namedtuples, and the client loop either inside a tf_computation or lifted out with
# tff.sequence_reduce.

class _ClientOutput(collections.namedtuple("_ClientOutput", ["weights_delta", "client_weight", "model_output"])):
    pass


class _ServerState(collections.namedtuple("_ServerState", ["model", "optimizer_state", "round_num"])):
    pass


_FEATURES, _CLASSES = 6, 3
_SPEC = collections.OrderedDict(x=tf.TensorSpec([None, _FEATURES], tf.float32), y=tf.TensorSpec([None], tf.int32))


def _simple_keras():  # no Input layer: from_keras_model builds it from the input spec
    keras.utils.set_random_seed(5)
    return keras.Sequential([keras.layers.Dense(8, activation="relu"), keras.layers.Dense(_CLASSES)])


def _simple_model_fn():
    return tff.learning.models.from_keras_model(
        _simple_keras(), input_spec=_SPEC, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy()])


def _prime(model, optimizer):
    """Creates the optimizer's variables with a zero step, as the example does."""
    weights = tff.learning.models.ModelWeights.from_model(model)
    optimizer.apply_gradients(zip([tf.zeros_like(v) for v in weights.trainable], weights.trainable))
    assert optimizer.variables()  # Keras 2's spelling: a method


@tf.function
def _client_loop(model, dataset, initial, optimizer):
    weights = tff.learning.models.ModelWeights.from_model(model)
    tf.nest.map_structure(lambda v, t: v.assign(t), weights, initial)
    count = tf.constant(0, tf.int32)
    for batch in iter(dataset):
        with tf.GradientTape() as tape:
            output = model.forward_pass(batch)
        optimizer.apply_gradients(zip(tape.gradient(output.loss, weights.trainable), weights.trainable), name="client")
        count += tf.shape(batch["y"])[0]
    delta = tf.nest.map_structure(lambda a, b: a - b, weights.trainable, initial.trainable)
    return _ClientOutput(delta, tf.cast(count, tf.float32), model.report_local_unfinalized_metrics())


def _build_simple_fedavg(model_fn, use_sequence_reduce, client_lr=0.1):
    metrics_aggregation = tff.learning.metrics.sum_then_finalize(model_fn().metric_finalizers())

    @tff.tensorflow.computation()
    def server_init():
        model, optimizer = model_fn(), keras.optimizers.SGD(learning_rate=1.0)
        _prime(model, optimizer)
        return _ServerState(tff.learning.models.ModelWeights.from_model(model), optimizer.variables(), 0)

    state_type = server_init.type_signature.result
    weights_type = state_type.model  # TFF's attribute access to a named element
    dataset_type = tff.SequenceType(tff.tensorflow.to_type(_SPEC))

    @tff.tensorflow.computation(state_type, weights_type.trainable)
    def server_update(state, delta):
        model, optimizer = model_fn(), keras.optimizers.SGD(learning_rate=1.0)
        _prime(model, optimizer)
        weights = tff.learning.models.ModelWeights.from_model(model)
        tf.nest.map_structure(lambda v, t: v.assign(t), weights, state.model)
        tf.nest.map_structure(lambda v, t: v.assign(t), optimizer.variables(), state.optimizer_state)
        optimizer.apply_gradients(zip([-d for d in delta], weights.trainable), name="server_update")
        return _ServerState(weights, optimizer.variables(), state.round_num + 1)

    if not use_sequence_reduce:
        @tff.tensorflow.computation(weights_type, dataset_type)
        def client_update(initial, dataset):
            return _client_loop(model_fn(), dataset, initial, keras.optimizers.SGD(learning_rate=client_lr))
    else:
        @tff.tensorflow.computation(weights_type)
        def client_zero(initial):
            return _ClientOutput(initial.trainable, tf.constant(0.0), model_fn().report_local_unfinalized_metrics())

        @tff.tensorflow.computation(client_zero.type_signature.result, tff.tensorflow.to_type(_SPEC))
        def client_step(so_far, batch):  # one batch from where the previous step left the weights
            model, optimizer = model_fn(), keras.optimizers.SGD(learning_rate=client_lr)
            weights = tff.learning.models.ModelWeights.from_model(model)
            tf.nest.map_structure(lambda v, t: v.assign(t), weights.trainable, so_far.weights_delta)
            with tf.GradientTape() as tape:
                output = model.forward_pass(batch)
            optimizer.apply_gradients(zip(tape.gradient(output.loss, weights.trainable), weights.trainable))
            metrics = tf.nest.map_structure(lambda a, b: a + b, dict(so_far.model_output),
                                            dict(model.report_local_unfinalized_metrics()))
            return _ClientOutput([tf.identity(v) for v in weights.trainable],
                                 so_far.client_weight + tf.cast(tf.shape(batch["y"])[0], tf.float32),
                                 collections.OrderedDict((k, metrics[k]) for k in so_far.model_output))

        @tff.tensorflow.computation(client_zero.type_signature.result, weights_type)
        def to_delta(final, initial):
            return _ClientOutput([a - b for a, b in zip(final.weights_delta, initial.trainable)], final.client_weight,
                                 final.model_output)

        @tff.federated_computation(weights_type, dataset_type)
        def client_update(initial, batches):
            return to_delta(tff.sequence_reduce(batches, client_zero(initial), client_step), initial)

    @tff.federated_computation(tff.FederatedType(state_type, tff.SERVER), tff.FederatedType(dataset_type, tff.CLIENTS))
    def run_one_round(state, datasets):
        weights = tff.federated_broadcast(tff.federated_map(tff.tensorflow.computation(lambda s: s.model, state_type), state))
        outputs = tff.federated_map(client_update, (weights, datasets))
        delta = tff.federated_mean(outputs.weights_delta, weight=outputs.client_weight)
        return tff.federated_map(server_update, (state, delta)), metrics_aggregation(outputs.model_output)

    return tff.templates.IterativeProcess(tff.federated_computation(lambda: tff.federated_eval(server_init, tff.SERVER)),
                                          run_one_round)


def _simple_clients():
    rng = np.random.RandomState(2)
    return [(rng.randn(n, _FEATURES).astype(np.float32), rng.randint(0, _CLASSES, n).astype(np.int32)) for n in (5, 8)]


def _keras_fedavg_round(initial, clients, client_lr=0.1):
    """Plain Keras: SGD over each client's batches of 3, example-weighted mean of the deltas."""
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    deltas, counts = [], []
    for x, y in clients:
        model = _simple_keras()
        model.build((None, _FEATURES))
        model.set_weights(initial)
        for start in range(0, len(y), 3):
            with tf.GradientTape() as tape:
                loss = loss_fn(y[start:start + 3], model(x[start:start + 3], training=True))
            for variable, gradient in zip(model.trainable_variables, tape.gradient(loss, model.trainable_variables)):
                variable.assign_sub(client_lr * gradient)
        deltas.append([v.numpy() - w for v, w in zip(model.trainable_variables, initial)])
        counts.append(len(y))
    return [w + np.average([d[i] for d in deltas], axis=0, weights=counts) for i, w in enumerate(initial)]


@pytest.mark.parametrize("use_sequence_reduce", [False, True])
def test_flow_simple_fedavg(use_sequence_reduce):
    process = _build_simple_fedavg(_simple_model_fn, use_sequence_reduce)
    state = process.initialize()
    assert state.round_num == 0 and len(state.optimizer_state) >= 1
    clients = _simple_clients()
    initial = [np.asarray(w) for w in state.model.trainable]
    datasets = [tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=y)).batch(3) for x, y in clients]
    state, metrics = process.next(state, datasets)
    assert state.round_num == 1 and metrics["num_examples"] == sum(len(y) for _, y in clients)
    for got, want in zip(state.model.trainable, _keras_fedavg_round(initial, clients)):
        np.testing.assert_allclose(got, want, atol=1e-5)
    # A client's data may also be a Python list of batches (TFF turns it into a dataset).
    x, y = clients[0]
    as_list = [[collections.OrderedDict(x=x[s:s + 3], y=y[s:s + 3]) for s in range(0, len(y), 3)]]
    after_list, _ = process.next(process.initialize(), as_list)
    for got, want in zip(after_list.model.trainable, _keras_fedavg_round(initial, clients[:1])):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_keras_2_spellings_bridged_on_keras_3():
    """optimizer.variables() and Model.reset_states(): Keras 2 spellings TFF code uses."""

    @tff.tensorflow.computation(tf.float32)
    def step(rate):
        variable = tf.Variable(2.0)
        optimizer = keras.optimizers.SGD(learning_rate=rate)  # a tensor argument, as in TFF's custom algorithms
        optimizer.apply_gradients([(tf.constant(1.0), variable)], name="named")
        return variable, optimizer.variables()[0]

    value, iterations = step(0.25)
    assert value == pytest.approx(1.75) and iterations == 1
    model = keras.Sequential([keras.Input((3, 2), batch_size=1), keras.layers.LSTM(4, stateful=True)])
    first = model(np.ones((1, 3, 2), np.float32)).numpy()
    assert not np.allclose(model(np.ones((1, 3, 2), np.float32)).numpy(), first)  # the state carried over
    model.reset_states()
    np.testing.assert_allclose(model(np.ones((1, 3, 2), np.float32)).numpy(), first, rtol=1e-6)


def test_flow_composing_learning_algorithms():
    """FedAvg with client gradient clipping from parts: a user's ClientWorkProcess with TFF's builders."""
    emnist_train = _emnist_like(seed=4)

    def preprocess(dataset):
        return dataset.batch(5).map(lambda e: (tf.reshape(e["pixels"], [-1, 784]), tf.reshape(e["label"], [-1, 1])))

    client_ids = sorted(emnist_train.client_ids)[:3]
    federated_train_data = [preprocess(emnist_train.create_tf_dataset_for_client(x)) for x in client_ids]

    def create_keras_model():
        return tf.keras.models.Sequential([
            tf.keras.layers.Input(shape=(784,)),
            tf.keras.layers.Dense(10, kernel_initializer=tf.keras.initializers.GlorotNormal(seed=0)),
            tf.keras.layers.Softmax()])

    def model_fn():
        return tff.learning.from_keras_model(create_keras_model(), input_spec=federated_train_data[0].element_spec,
                                             loss=tf.keras.losses.SparseCategoricalCrossentropy(),
                                             metrics=[tf.keras.metrics.SparseCategoricalAccuracy()])

    @tf.function
    def client_update(model: tff.learning.Model, dataset, server_weights, client_optimizer):
        client_weights = tff.learning.models.ModelWeights.from_model(model)
        tf.nest.map_structure(lambda x, y: x.assign(y), client_weights, server_weights)
        num_examples = 0.0
        for batch in dataset:
            with tf.GradientTape() as tape:
                outputs = model.forward_pass(batch)
                num_examples += tf.cast(outputs.num_examples, tf.float32)
            grads = tape.gradient(outputs.loss, client_weights.trainable)
            gradient_norm = tf.linalg.global_norm(grads)
            if gradient_norm > 1:
                grads = tf.nest.map_structure(lambda x: x / gradient_norm, grads)
            client_optimizer.apply_gradients(zip(grads, client_weights.trainable))
        update = tf.nest.map_structure(tf.subtract, client_weights.trainable, server_weights.trainable)
        return tff.learning.templates.ClientResult(update=update, update_weight=num_examples)

    def build_gradient_clipping_client_work(model_fn, optimizer_fn):
        with tf.Graph().as_default():
            model = model_fn()
        data_type = tff.SequenceType(model.input_spec)
        model_weights_type = tff.learning.models.weights_type_from_model(model)

        @tff.federated_computation
        def initialize_fn():
            return tff.federated_value((), tff.SERVER)

        @tff.tf_computation(model_weights_type, data_type)
        def client_update_computation(model_weights, dataset):
            return client_update(model_fn(), dataset, model_weights, optimizer_fn())

        @tff.federated_computation(initialize_fn.type_signature.result, tff.type_at_clients(model_weights_type),
                                   tff.type_at_clients(data_type))
        def next_fn(state, model_weights, client_dataset):
            client_result = tff.federated_map(client_update_computation, (model_weights, client_dataset))
            return tff.templates.MeasuredProcessOutput(state, client_result, tff.federated_value((), tff.SERVER))

        return tff.learning.templates.ClientWorkProcess(initialize_fn, next_fn)

    @tff.tf_computation()
    def initial_model_weights_fn():
        return tff.learning.models.ModelWeights.from_model(model_fn())

    model_weights_type = initial_model_weights_fn.type_signature.result
    distributor = tff.learning.templates.build_broadcast_process(model_weights_type)
    client_work = build_gradient_clipping_client_work(model_fn, lambda: tf.keras.optimizers.SGD(learning_rate=0.5))
    aggregator = tff.aggregators.MeanFactory().create(model_weights_type.trainable, tff.TensorType(tf.float32))
    finalizer = tff.learning.templates.build_apply_optimizer_finalizer(
        lambda: tf.keras.optimizers.SGD(learning_rate=1.0), model_weights_type)
    fed_avg_with_clipping = tff.learning.templates.compose_learning_process(
        initial_model_weights_fn, distributor, client_work, aggregator, finalizer)
    state = fed_avg_with_clipping.initialize()
    assert state.client_work == ()
    output = fed_avg_with_clipping.next(state, federated_train_data)
    assert set(output.metrics) == {"distributor", "client_work", "aggregator", "finalizer"}

    # Plain Keras: clipped SGD on each client, example-weighted mean of the deltas, added.
    initial = [np.asarray(w) for w in state.global_model_weights.trainable]
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy()
    deltas, counts = [], []
    for x in client_ids:
        reference = create_keras_model()
        reference.set_weights(initial)
        count = 0
        for features, labels in preprocess(emnist_train.create_tf_dataset_for_client(x)):
            with tf.GradientTape() as tape:
                loss = loss_fn(labels, reference(features))
            grads = tape.gradient(loss, reference.trainable_variables)
            norm = float(tf.linalg.global_norm(grads))
            for variable, grad in zip(reference.trainable_variables, grads):
                variable.assign_sub(0.5 * (grad / norm if norm > 1 else grad))
            count += len(labels)
        deltas.append([v.numpy() - w for v, w in zip(reference.trainable_variables, initial)])
        counts.append(count)
    expected = [w + np.average([d[i] for d in deltas], axis=0, weights=counts) for i, w in enumerate(initial)]
    for got, want in zip(output.state.global_model_weights.trainable, expected):
        np.testing.assert_allclose(got, want, atol=2e-5)

    # The parts must fit: each mismatch names the part and the types.
    other_weights = tff.to_type(tff.learning.models.ModelWeights([tff.TensorType(tf.float32, [3])], []))
    with pytest.raises(tff.templates.ProcessTypeError, match="initial model weights and the distributor"):
        tff.learning.templates.compose_learning_process(
            initial_model_weights_fn, tff.learning.templates.build_broadcast_process(other_weights), client_work, aggregator, finalizer)
    with pytest.raises(tff.templates.ProcessTypeError, match="client work's update and the aggregator"):
        tff.learning.templates.compose_learning_process(
            initial_model_weights_fn, distributor, client_work,
            tff.aggregators.MeanFactory().create(other_weights.trainable, tff.TensorType(tf.float32)), finalizer)
    with pytest.raises(tff.templates.ProcessTypeError, match="client work must return ClientResult"):
        tff.learning.templates.ClientWorkProcess(distributor.initialize, tff.federated_computation(
            lambda s, w, d: tff.templates.MeasuredProcessOutput(s, w, s),
            distributor.initialize.type_signature.result, tff.type_at_clients(model_weights_type),
            tff.type_at_clients(tff.SequenceType(tf.float32))))

    # TFF's own client work builder in the same composition is FedAvg: equal to build_weighted_fed_avg.
    sgd = tff.learning.optimizers.build_sgdm(learning_rate=0.1)
    composed = tff.learning.templates.compose_learning_process(
        initial_model_weights_fn, distributor, tff.learning.templates.build_model_delta_client_work(model_fn, sgd),
        aggregator, tff.learning.templates.build_apply_optimizer_finalizer(tff.learning.optimizers.build_sgdm(1.0), model_weights_type))
    fed_avg = tff.learning.algorithms.build_weighted_fed_avg(model_fn, sgd)
    start = fed_avg.initialize()
    composed_state = composed.set_model_weights(composed.initialize(), fed_avg.get_model_weights(start))
    a = composed.next(composed_state, federated_train_data).state.global_model_weights.trainable
    b = fed_avg.next(start, federated_train_data).state.global_model_weights.trainable
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
