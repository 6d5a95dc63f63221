"""FedAvg rounds on every kind of client pipeline equal the same rounds run on the dataset path
(each dataset iterated inside the graph, no pipeline read outside it): metrics and weights."""

import collections

import keras
import numpy as np
import pytest
import tensorflow as tf

from fedsim import learning
from fedsim.core import sequences
from fedsim.learning import optimizers
from fedsim.simulation.datasets import SqlClientData, write_sqlite

FEATURES, CLASSES, ROUNDS = 4, 3, 2
INPUT_SPEC = collections.OrderedDict(x=tf.TensorSpec([None, FEATURES], tf.float32), y=tf.TensorSpec([None], tf.int32))


def model_fn():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(5, activation="tanh"), keras.layers.Dense(CLASSES)])
    return learning.from_keras_model(model, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                                     input_spec=INPUT_SPEC, metrics=[keras.metrics.SparseCategoricalAccuracy()])


def _process():
    return learning.build_weighted_fed_avg(model_fn, lambda: optimizers.build_sgdm(0.1))


def _examples(n, seed):
    rng = np.random.RandomState(seed)
    return collections.OrderedDict(x=rng.randn(n, FEATURES).astype(np.float32), y=rng.randint(0, CLASSES, n).astype(np.int32))


def _format(batch):  # TFF's tutorials' map step
    return collections.OrderedDict(x=tf.reshape(batch["x"], [-1, FEATURES]), y=tf.reshape(batch["y"], [-1]))


def _clients(preprocess, sizes=(9, 14, 5)):
    return [preprocess(tf.data.Dataset.from_tensor_slices(_examples(n, seed))) for seed, n in enumerate(sizes)]


PIPELINES = {
    "bare, uneven last batch": lambda: _clients(lambda d: d.batch(4)),
    "drop_remainder": lambda: _clients(lambda d: d.batch(4, drop_remainder=True)),
    "tutorial: shuffle(seed) batch map prefetch": lambda: _clients(lambda d: d.shuffle(8, seed=1).batch(4).map(_format).prefetch(2)),
    "repeat(2) shuffle batch": lambda: _clients(lambda d: d.repeat(2).shuffle(8, seed=1).batch(4)),
    "map filter take skip": lambda: _clients(lambda d: d.map(lambda e: e).filter(lambda e: e["y"] > 0).skip(1).take(9).batch(3)),
    "a filter that empties a client": lambda: _clients(lambda d: d.batch(4).filter(lambda b: tf.size(b["y"]) > 4)),
    "a client with zero examples": lambda: _clients(lambda d: d.batch(4).map(_format), sizes=(9, 0, 5)),
    "cache": lambda: _clients(lambda d: d.batch(4).cache()),
    "padded_batch": lambda: _clients(lambda d: d.padded_batch(4)),
    "interleave": lambda: _clients(lambda d: tf.data.Dataset.range(2).interleave(lambda i: d, cycle_length=2).batch(4)),
}


@pytest.fixture(scope="module")
def sqlite_data(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("sql") / "clients.sqlite")
    write_sqlite(path, {"train": {f"c{seed}": _examples(n, seed) for seed, n in enumerate((9, 14, 5))}})
    features = {"x": tf.io.FixedLenFeature([FEATURES], tf.float32), "y": tf.io.FixedLenFeature([], tf.int32)}
    return SqlClientData(path, "train", features).preprocess(lambda d: d.shuffle(8, seed=1).batch(4).map(_format).prefetch(2))


def _run(process, make_clients):
    state = process.initialize()
    metrics = []
    for _ in range(ROUNDS):
        output = process.next(state, make_clients())
        state = output.state
        metrics.append(output.metrics["client_work"]["train"])
    return metrics, [np.asarray(w) for w in process.get_model_weights(state).trainable]


@pytest.fixture(scope="module")
def processes():
    fast = _process()
    with pytest.MonkeyPatch.context() as patch:  # no loop adapter: fast forms are never traced
        patch.setattr(sequences, "enable_loops", lambda: False)
        dataset_path = _process()
        dataset_path.initialize()
    return fast, dataset_path


def _assert_rounds_equal(processes, make_clients):
    fast, dataset_path = processes
    fast_metrics, fast_weights = _run(fast, make_clients)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sequences, "enable_loops", lambda: False)
        slow_metrics, slow_weights = _run(dataset_path, make_clients)
    assert fast_metrics == slow_metrics
    for a, b in zip(fast_weights, slow_weights):
        np.testing.assert_array_equal(a, b)
    return fast_metrics


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_rounds_on_each_pipeline_equal_the_dataset_path(processes, name):
    metrics = _assert_rounds_equal(processes, PIPELINES[name])
    assert metrics[0]["num_examples"] == sum(sum(int(tf.size(b["y"])) for b in d) for d in PIPELINES[name]())


def test_rounds_on_sqlite_client_data_preprocessed_equal_the_dataset_path(processes, sqlite_data):
    ids = sqlite_data.client_ids
    _assert_rounds_equal(processes, lambda: [sqlite_data.create_tf_dataset_for_client(i) for i in ids])


def test_an_infinite_client_dataset_is_a_clear_error(processes):
    fast, _ = processes
    state = fast.initialize()
    with pytest.raises(sequences.InfiniteSequenceError, match="infinite"):
        fast.next(state, _clients(lambda d: d.batch(4).repeat()))
