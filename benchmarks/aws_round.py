"""Seconds per round through the serverless server on the local stack vs the local context.

For an MLP and a CNN, with 3 and 10 silos (each a separate `python -m fedsim.aws.silo` process
holding ~100 EMNIST-shaped examples), it runs warm-up + measured rounds of FedAvg both ways on
the same data and prints seconds per round, the ratio, and the split of a serverless round:
prepare + publish -> delivery to the silos -> work -> upload/record -> stream + claim ->
aggregate -> update (+ next prepare) -> answer and completion seen by the caller.

    .venv/bin/python benchmarks/aws_round.py [--rounds 3] [--silos 3 10] [--models mlp cnn]
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import fedsim  # noqa: E402
from fedsim import aws, learning, simulation  # noqa: E402
from fedsim.core import context_stack  # noqa: E402
from fedsim.learning import optimizers  # noqa: E402

ELEMENT = collections.OrderedDict(x=tf.TensorSpec([28, 28, 1], tf.float32), y=tf.TensorSpec([], tf.int32))
INPUT_SPEC = collections.OrderedDict(x=tf.TensorSpec([None, 28, 28, 1], tf.float32), y=tf.TensorSpec([None], tf.int32))


def build_model(kind: str) -> keras.Model:
    if kind == "mlp":
        layers = [keras.layers.Flatten(), keras.layers.Dense(200, activation="relu"), keras.layers.Dense(62)]
    else:
        layers = [keras.layers.Conv2D(16, 5, activation="relu"), keras.layers.MaxPooling2D(2), keras.layers.Conv2D(32, 5, activation="relu"),
                  keras.layers.MaxPooling2D(2), keras.layers.Flatten(), keras.layers.Dense(62)]
    return keras.Sequential([keras.Input((28, 28, 1))] + layers)


@fedsim.tf_computation(fedsim.SequenceType(ELEMENT))
def batch(dataset):
    return dataset.batch(20)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--silos", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"])
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="fedsim_aws_bench_")
    for num_silos in args.silos:
        silo_ids = [f"silo{i}" for i in range(num_silos)]
        arrays = simulation.emnist_like_client_arrays(num_silos, seed=0, min_examples=90, max_examples=110)
        paths = []
        for silo, (pixels, labels) in zip(silo_ids, arrays):
            path = os.path.join(workdir, f"{silo}.npz")
            np.savez(path, x=pixels, y=labels)
            paths.append(path)
        local_data = [tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=p, y=l)).batch(20) for p, l in arrays]
        # The baseline first, on a quiet machine (no stack, no silo processes yet).
        processes = {kind: build_process(kind) for kind in args.models}
        baselines = {kind: local_seconds(processes[kind], local_data, args.rounds) for kind in args.models}
        with aws.LocalStack(silo_ids, silo_visibility_timeout=60) as stack:
            def config_path(silo):  # each silo its own credentials
                path = os.path.join(workdir, f"stack{num_silos}-{silo}.json")
                with open(path, "w") as stream:
                    stream.write(stack.silo_config(silo).to_json())
                return path

            total_rounds = len(args.models) * (args.rounds + 1)
            agents = [subprocess.Popen(
                [sys.executable, "-m", "fedsim.aws.silo", "--stack-config", config_path(silo), "--silo-id", silo, "--data", path,
                 "--rounds", str(total_rounds), "--idle-timeout", "300"],
                env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ) for silo, path in zip(silo_ids, paths)]
            try:
                for kind in args.models:
                    run_model(kind, processes[kind], baselines[kind], stack, silo_ids, args.rounds)
            finally:
                for agent in agents:
                    agent.wait(timeout=600) if agent.poll() is None else None


def build_process(kind: str):
    def model_fn():
        return learning.from_keras_model(build_model(kind), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                                         input_spec=INPUT_SPEC)

    return learning.build_weighted_fed_avg(model_fn, lambda: optimizers.build_sgdm(0.05))


def local_seconds(process, local_data: list, rounds: int) -> float:
    with context_stack.execution_context(fedsim.LocalExecutionContext()):
        state = process.initialize()
        process.next(state, local_data)  # warm-up
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            state = process.next(state, local_data).state
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def run_model(kind: str, process, local: float, stack: aws.LocalStack, silo_ids: list, rounds: int) -> None:
    with context_stack.execution_context(fedsim.LocalExecutionContext()):
        state = process.initialize()
    with aws.execution_context(stack, silos=silo_ids, preprocess=batch, round_deadline_seconds=600) as context:
        process.next(state, silo_ids)  # warm-up: phases uploaded, silos cache the work computation
        aws_times, splits = [], []
        current = state
        for _ in range(rounds):
            started = time.time()
            output = process.next(current, silo_ids)
            finished = time.time()
            aws_times.append(finished - started)
            splits.append(split(context.last_report.rounds[0], started, finished))
            current = output.state
    serverless = statistics.median(aws_times)
    print(f"{kind.upper():3s} {len(silo_ids):2d} silos: local context {local:6.3f} s/round, local stack {serverless:6.3f} s/round, "
          f"ratio {serverless / local:5.1f}")
    stages = {name: statistics.median(s[name] for s in splits) for name in splits[0]}
    print("      split: " + ", ".join(f"{name} {seconds:.3f}s" for name, seconds in stages.items()))


def split(report: dict, started: float, finished: float) -> dict:
    silos = report["silo_timings"].values()
    received = max(s["received_at"] for s in silos)
    written = max(s["written_at"] for s in silos)
    work = statistics.median(s["work_seconds"] for s in silos)
    timings = report["timings"]
    return {
        "prepare+upload": report["opened_at"] - started,
        "publish->silos": received - report["opened_at"],
        "work (median)": work,
        "upload+record": written - received - work,
        "stream+claim": timings["claimed_at"] - written,
        "aggregate": timings["aggregate_seconds"],
        "update": timings["update_seconds"],
        "answer->caller": finished - timings["claimed_at"] - timings["aggregate_seconds"] - timings["update_seconds"],
    }


if __name__ == "__main__":
    main()
