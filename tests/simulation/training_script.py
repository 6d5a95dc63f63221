"""A small FedAvg run driven by run_training_process, for the kill-and-resume test.

Environment: STATE_DIR, OUT_PATH, SECONDS_PER_ROUND (a sleep in the selection function, so a
run can be killed between rounds). Imports nothing from the tests.
"""

import collections
import os
import time

import keras
import numpy as np
import tensorflow as tf

from fedsim import learning, simulation
from fedsim.learning import optimizers

TOTAL_ROUNDS = 6


def model_fn():
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10)])
    return learning.from_keras_model(
        model,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        input_spec=collections.OrderedDict(x=tf.TensorSpec([None, 784], tf.float32), y=tf.TensorSpec([None], tf.int32)),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )


def main():
    keras.utils.set_random_seed(0)  # the same initial model in every run
    state_dir, out_path = os.environ["STATE_DIR"], os.environ["OUT_PATH"]
    pause = float(os.environ.get("SECONDS_PER_ROUND", "0"))
    train = simulation.datasets.emnist.synthetic_client_data(12, only_digits=True, seed=0, min_examples=20, max_examples=30)
    train = train.preprocess(lambda ds: ds.map(lambda e: collections.OrderedDict(x=tf.reshape(e["pixels"], [784]), y=e["label"])).batch(8))
    process = learning.build_weighted_fed_avg(
        model_fn,
        client_optimizer_fn=lambda: optimizers.build_sgdm(0.05),
        server_optimizer_fn=lambda: optimizers.build_sgdm(1.0, momentum=0.9),  # server state that must be restored
    )
    sample = simulation.build_uniform_sampling_fn(train.client_ids, random_seed=5)

    def select(round_num):
        time.sleep(pause)
        return [train.create_tf_dataset_for_client(client_id) for client_id in sample(round_num, 4)]

    final = simulation.run_training_process(
        process,
        select,
        total_rounds=TOTAL_ROUNDS,
        program_state_manager=simulation.FileProgramStateManager(state_dir, keep_total=0),
        metrics_managers=[simulation.CSVMetricsManager(os.path.join(state_dir, "metrics.csv"))],
    )
    np.savez(out_path, *[np.asarray(w) for w in process.get_model_weights(final).trainable])


if __name__ == "__main__":
    main()
