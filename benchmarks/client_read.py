"""Reading one client's dataset for the fast form: fedsim's reader vs iterating it with tf.data.

For each pipeline of `fedavg.py` (on its 100 EMNIST-shaped clients, about 111 examples each),
the milliseconds per client of

- fedsim: `sequences.materialize` (pipelines read without a tf.data iterator where their steps
  allow, `fedsim.core.pipelines`), what the runtime runs on its producer threads;
- tf.data: one eager iteration of the same dataset with tf.data's rewrites off, then stacked the
  same way: how every client was read before `pipelines`;
- tf.data, default options: the plain `for element in dataset` a user would write.

Each client's dataset is built before it is timed (the caller's code, not timed); one thread,
median of 5 passes over the clients.

    .venv/bin/python benchmarks/client_read.py [--clients 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

import fedavg  # noqa: E402  (benchmarks/fedavg.py: workload and pipelines)
from fedsim.core import sequences  # noqa: E402
from fedsim.core import types as ft  # noqa: E402
from fedsim.simulation import EMNIST_INPUT_SPEC  # noqa: E402


def _build(arrays: list, pipeline: str, count: int, sql) -> list:
    if pipeline == "sqlite":
        return [sql.create_tf_dataset_for_client(f"{i % len(arrays):03d}") for i in range(count)]
    return [fedavg.pipeline_datasets(arrays, [i % len(arrays)], pipeline)[0] for i in range(count)]


def _iterated(dataset: tf.data.Dataset, element_type: ft.Type, options: bool) -> list:
    once = dataset.with_options(sequences._ONCE) if options else dataset  # noqa: SLF001 - the old reader's options
    read = [[leaf.numpy() for leaf in tf.nest.flatten(element)] for element in once]
    order = sequences._leaf_order(dataset.element_spec, element_type)  # noqa: SLF001
    return [t for leaf_type, i in zip(ft.flatten_type(element_type), order) for t in sequences._stack([e[i] for e in read], leaf_type)]  # noqa: SLF001


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    args = parser.parse_args()
    arrays = fedavg.client_arrays()
    element_type = ft.to_type(EMNIST_INPUT_SPEC)
    readers = {
        "fedsim": lambda d: sequences.materialize(d, element_type),
        "tf.data": lambda d: _iterated(d, element_type, True),
        "tf.data, default options": lambda d: _iterated(d, element_type, False),
    }
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        sql = fedavg.sqlite_client_data(arrays, directory)
        print(f"ms per client, {args.clients} clients, median of 5 passes, one thread; TensorFlow {tf.__version__}")
        print(f"  {'pipeline':<10}" + "".join(f"{name:>28}" for name in readers))
        for pipeline in ("bare", "tutorial", "repeat5", "sqlite"):
            cells = []
            for read in readers.values():
                passes = []
                for _ in range(5):
                    datasets = _build(arrays, pipeline, args.clients, sql)
                    started = time.perf_counter()
                    for dataset in datasets:
                        read(dataset)
                    passes.append((time.perf_counter() - started) / args.clients * 1000)
                cells.append(f"{statistics.median(passes):>28.2f}")
            print(f"  {pipeline:<10}" + "".join(cells), flush=True)


if __name__ == "__main__":
    main()
