"""A silo's work phase on the tutorial pipeline: fast form (as silos run it now) vs dataset form.

The FedAvg work phase of the MLP, serialized and read back as a silo reads it (op allowlist
checked), run on one silo's data (2,000 EMNIST-shaped examples) preprocessed as TFF's tutorials
do (`shuffle(100, seed=1).batch(20).map(format).prefetch(2)`), and with the bare
`batch(20)` pipeline. "dataset form" is the same bytes without their fast form: what a silo ran
before the fast form was serialized with the computation. "raw" is the plain-TensorFlow lower
bound of the same epoch (`fedavg.Raw`). Median seconds per work call over R calls.

    .venv/bin/python benchmarks/silo_work.py [--calls 8] [--examples 2000]
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import fedavg  # noqa: E402  (benchmarks/fedavg.py: workload, pipelines, lower bound)
import fedsim  # noqa: E402
from fedsim.core import phase_runner  # noqa: E402
from fedsim.core import tensorflow_computation as tfc  # noqa: E402
from fedsim.simulation import emnist_like_client_arrays  # noqa: E402


def median_seconds(fn, calls: int, make=lambda: None) -> float:
    """Median seconds of `fn(make())` over calls 2..R; `make` (building the input) is not timed."""
    seconds = []
    for _ in range(calls):
        argument = make()
        started = time.perf_counter()
        fn(argument)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--examples", type=int, default=2000)
    args = parser.parse_args()
    x, y = emnist_like_client_arrays(1, seed=5, min_examples=args.examples, max_examples=args.examples)[0]
    process = fedavg.build_process("mlp")
    state = process.initialize()
    form = fedsim.compile_to_canonical_form(process.next)
    broadcast, _ = phase_runner.prepare(form.prepare, state)
    work = fedsim.deserialize_computation(fedsim.serialize_computation(form.work))  # as a silo accepts it
    dataset_form = tfc.TensorFlowComputation(work.graph_def, work.parameter_names, work.result_names,
                                             work.type_signature, work.name, work.unpack)
    raw = fedavg.Raw("mlp", [np.array(w) for w in process.get_model_weights(state).trainable])
    raw_seconds = median_seconds(lambda _: raw.round([(x, y)], [0]), args.calls)
    print(f"silo work phase, MLP, {args.examples} examples, batch 20; median s per call over {args.calls - 1} calls; "
          f"raw (plain TF lower bound) {raw_seconds:.4f} s")
    for pipeline in ("bare", "tutorial"):
        def data():
            return fedavg.PIPELINES[pipeline](tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=y)))

        fast = median_seconds(lambda dataset: phase_runner.work(work, dataset, broadcast), args.calls, data)
        slow = median_seconds(lambda dataset: phase_runner.work(dataset_form, dataset, broadcast), args.calls, data)
        print(f"  {pipeline:<9} fast form {fast:.4f} s ({fast / raw_seconds:.2f}x raw)   dataset form {slow:.4f} s "
              f"({slow / raw_seconds:.2f}x raw)   speed-up {slow / fast:.2f}x")


if __name__ == "__main__":
    main()
