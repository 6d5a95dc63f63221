"""Wall-clock time to accuracy on the local stack: synchronous rounds vs an asynchronous (FedBuff) run.

Ten silos (`SiloAgent` threads, each its own credentials, queue and ~100 EMNIST-shaped
examples), one of them (10%) ten times slower: every silo sleeps `--work-seconds` in its work,
the slow one ten times that (the issue's "slow ones sleeping in their work"). The same
784-62 softmax model and optimizers as `async_time_to_accuracy.py` (client SGD 0.05, batch 20,
server SGD 1.0, example-weighted).

- sync: `AwsExecutionContext.run_rounds`, all ten silos per round (each round waits for the
  slow one), `--rounds` rounds;
- async: `AwsExecutionContext.run_async`, buffer K (`--buffers`), FedBuff's 1/sqrt(1+s),
  `--async-updates` client updates (default twice the sync run's: an asynchronous update is
  cheaper in time but, being stale and down-weighted, worth less; what counts is time to target).

After each run, every version's model is read back from the server's record
(`fetch_global_model`) and evaluated on 2,000 held-out examples; its time is when the handler
published it, from the run's start. Printed: the target (sync's final accuracy minus 1 point),
the seconds each run takes to reach it, the speed-up and the final accuracies.

    .venv/bin/python benchmarks/aws_async_time_to_accuracy.py [--rounds 10] [--buffers 5 10] [--work-seconds 1.0]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import fedsim  # noqa: E402
from fedsim import aws, simulation  # noqa: E402
from fedsim.learning import optimizers  # noqa: E402

SILOS = [f"silo-{i:02d}" for i in range(10)]
SLOW = {"silo-09"}
ELEMENT = collections.OrderedDict(x=tf.TensorSpec([784], tf.float32), y=tf.TensorSpec([], tf.int32))


@fedsim.tf_computation(fedsim.SequenceType(ELEMENT))
def batch(dataset):
    return dataset.batch(20)


def build_process():
    def model_fn():
        model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(62, kernel_initializer="zeros")])
        return fedsim.learning.models.from_keras_model(
            model, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            input_spec=collections.OrderedDict(x=tf.TensorSpec([None, 784], tf.float32), y=tf.TensorSpec([None], tf.int32)))

    return fedsim.learning.algorithms.build_weighted_fed_avg(model_fn, lambda: optimizers.build_sgdm(0.05))


class SleepingSilo(aws.SiloAgent):
    """A silo whose work takes `delay` seconds longer (a slower site)."""

    delay = 0.0

    def work_output(self, request):
        time.sleep(self.delay)
        return super().work_output(request)


def curve(stack, run_id, started, test, process):
    """(seconds from the start, accuracy) of every version the run published."""
    x, y = test
    points = []
    for record in aws.read_lineage(stack.config, run_id).rounds:
        timings = record["timings"]
        published = timings.get("published_at") or (timings["claimed_at"] + timings["aggregate_seconds"] + timings["update_seconds"])
        kernel, bias = (np.asarray(w) for w in aws.fetch_global_model(stack.config, run_id, record["round"]).trainable)
        points.append((published - started, float(np.mean(np.argmax(x @ kernel + bias, axis=1) == y))))
    return points


def time_to(points, target):
    return next((t for t, accuracy in points if accuracy >= target), float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="synchronous rounds (x10 client updates)")
    parser.add_argument("--buffers", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--async-updates", type=int, default=None, help="client updates per async run (default: 2x sync's)")
    parser.add_argument("--work-seconds", type=float, default=1.0, help="a fast silo's added work time")
    parser.add_argument("--json", help="write the curves here")
    args = parser.parse_args()
    arrays = simulation.emnist_like_client_arrays(len(SILOS) + 20, seed=0)
    data = {silo: collections.OrderedDict(x=x.reshape(-1, 784).astype(np.float32), y=y.astype(np.int32))
            for silo, (x, y) in zip(SILOS, arrays)}
    test = (np.concatenate([x.reshape(-1, 784) for x, _ in arrays[len(SILOS):]])[:2000],
            np.concatenate([y for _, y in arrays[len(SILOS):]])[:2000])
    process = build_process()
    async_updates = args.async_updates or 2 * len(SILOS) * args.rounds
    results = {}
    with aws.LocalStack(SILOS, silo_visibility_timeout=600) as stack:
        agents = []
        for silo in SILOS:
            agent = SleepingSilo(stack.silo_config(silo), silo, tf.data.Dataset.from_tensor_slices(data[silo]), poll_seconds=1)
            agent.delay = args.work_seconds * (10 if silo in SLOW else 1)
            agents.append(agent)
            threading.Thread(target=agent.run, daemon=True).start()
        with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=600) as context:
            context.run_rounds(process, process.initialize(), SILOS, rounds=1)  # warm-up: computations uploaded, silos' caches
            started = time.time()
            context.run_rounds(process, process.initialize(), SILOS, rounds=args.rounds)
            results["sync"] = curve(stack, context.last_run.run_id, started, test, process)
            for k in args.buffers:
                started = time.time()
                context.run_async(process, process.initialize(), SILOS, total_versions=async_updates // k,
                                  buffer_size=k, deadline_seconds=1800)
                lineage = context.last_run
                staleness = [u["staleness"] for r in lineage.rounds for u in r["updates"]]
                results[f"async K={k}"] = curve(stack, lineage.run_id, started, test, process)
                results[f"async K={k} staleness"] = (float(np.mean(staleness)), int(max(staleness)))
        for agent in agents:
            agent.stop()
    target = results["sync"][-1][1] - 0.01
    sync_time = time_to(results["sync"], target)
    print(f"10 silos, 1 of them 10x slower (work +{args.work_seconds:g} s / +{10 * args.work_seconds:g} s), "
          f"{len(SILOS) * args.rounds} client updates sync, {async_updates} async; target accuracy {target:.4f} (sync final - 1 pt)")
    print(f"{'run':<12} {'s to target':>12} {'speed-up':>9} {'final acc':>10} {'best acc':>9} {'total s':>8} {'staleness mean/max':>19}")
    for name, points in results.items():
        if name.endswith("staleness"):
            continue
        reached = time_to(points, target)
        stale = results.get(f"{name} staleness")
        best = max(accuracy for _, accuracy in points)
        print(f"{name:<12} {reached:12.1f} {sync_time / reached:8.2f}x {points[-1][1]:10.4f} {best:9.4f} {points[-1][0]:8.1f} "
              f"{'' if stale is None else f'{stale[0]:.2f} / {stale[1]}':>19}")
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(results, stream, indent=1)


if __name__ == "__main__":
    main()
