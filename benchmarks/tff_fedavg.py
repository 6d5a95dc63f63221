"""TFF's side of `fedavg.py`: the same arrays, sample, models and pipelines, run by TFF 0.87.

Run by `fedavg.py --tff PYTHON` with the python of TFF's venv (TensorFlow 2.14, Keras 2;
`../shared/tools/setup_tff_venv.sh` makes it). TFF is a benchmark comparison only, never a
dependency of fedsim. Prints one JSON line: {"median_seconds": ..., "rounds": [...]}. For the
`sqlite` pipeline TFF reads the same examples from an in-memory `ClientData` with the same
preprocessing (TFF's SQL reader needs its own parsing step).

    /tmp/tffenv/bin/python benchmarks/tff_fedavg.py ARRAYS.npz mlp 10 10 tutorial
"""

import collections
import json
import os
import signal
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_federated as tff  # noqa: E402

BATCH, CLASSES, CLIENT_LR, SERVER_LR, NUM_CLIENTS = 20, 62, 0.02, 1.0, 100


def keras_model(kind):
    layers = tf.keras.layers
    if kind == "mlp":
        body = [layers.Flatten(), layers.Dense(200, activation="relu"), layers.Dense(200, activation="relu")]
    else:
        body = [layers.Conv2D(32, 3, activation="relu"), layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(2),
                layers.Dropout(0.25), layers.Flatten(), layers.Dense(128, activation="relu"), layers.Dropout(0.5)]
    return tf.keras.Sequential([tf.keras.Input((28, 28, 1)), *body, layers.Dense(CLASSES)])


def _format(batch):
    return collections.OrderedDict(x=tf.reshape(batch["x"], [-1, 28, 28, 1]), y=tf.reshape(batch["y"], [-1]))


PIPELINES = {
    "bare": lambda d: d.batch(BATCH),
    "tutorial": lambda d: d.shuffle(100, seed=1).batch(BATCH).map(_format).prefetch(2),
    "repeat5": lambda d: d.repeat(5).shuffle(100, seed=1).batch(BATCH),
}


def sample(round_num, cohort):
    return sorted(np.random.RandomState(1000 + round_num).choice(NUM_CLIENTS, cohort, replace=False).tolist())


def main():
    arrays_path, kind, cohort, rounds, pipeline = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    with np.load(arrays_path) as stored:
        arrays = [(stored[f"x{i}"], stored[f"y{i}"]) for i in range(len(stored.files) // 2)]
    spec = collections.OrderedDict(x=tf.TensorSpec([None, 28, 28, 1], tf.float32), y=tf.TensorSpec([None], tf.int32))

    def model_fn():
        return tff.learning.models.from_keras_model(
            keras_model(kind), loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), input_spec=spec,
            metrics=[tf.keras.metrics.SparseCategoricalAccuracy()])

    process = tff.learning.algorithms.build_weighted_fed_avg(
        model_fn, client_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=CLIENT_LR),
        server_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=SERVER_LR))
    client_data = None
    if pipeline == "sqlite":
        client_data = tff.simulation.datasets.TestClientData(
            {f"{i:03d}": collections.OrderedDict(x=x, y=y) for i, (x, y) in enumerate(arrays)}).preprocess(PIPELINES["tutorial"])
    state = process.initialize()
    seconds = []
    try:
        for round_num in range(1, rounds + 1):
            ids = sample(round_num, cohort)
            if client_data is not None:
                datasets = [client_data.create_tf_dataset_for_client(f"{i:03d}") for i in ids]
            else:
                datasets = [PIPELINES[pipeline](tf.data.Dataset.from_tensor_slices(
                    collections.OrderedDict(x=arrays[i][0], y=arrays[i][1]))) for i in ids]
            started = time.perf_counter()
            state = process.next(state, datasets).state
            seconds.append(time.perf_counter() - started)
    finally:
        try:  # TFF 0.87 leaves its C++ worker_binary running at exit
            import psutil

            children = psutil.Process().children(recursive=True)
            for child in children:
                child.send_signal(signal.SIGINT)
            _, alive = psutil.wait_procs(children, timeout=10)
            for child in alive:
                child.kill()
        except ImportError:
            pass
    print(json.dumps({"median_seconds": statistics.median(seconds[1:]), "rounds": seconds}))


if __name__ == "__main__":
    main()
