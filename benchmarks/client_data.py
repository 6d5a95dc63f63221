"""Reading one client's dataset: SQLite (TFF's format) vs in-memory arrays, and vs file size.

Writes EMNIST-shaped files (28x28 float pixels + label per tf.train.Example) of 3,400 and 340
clients x 100 examples, then measures for each: opening the file, first-client latency (build the
dataset and get its first element) and the cost of building + iterating a whole client, both
through `create_tf_dataset_for_client` and through the serializable `dataset_computation`
(TensorFlow's SqlDataset). The baseline is the same clients from in-memory numpy arrays. The
figures that matter: per-client cost flat in the number of clients in the file (ratio ~1).

    .venv/bin/python benchmarks/client_data.py [--clients 3400] [--examples 100] [--dir /tmp/x]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from fedsim.simulation import datasets  # noqa: E402

POOL = 512  # distinct example protos, reused cyclically: the content does not change the timing


def write_file(path: str, num_clients: int, examples: int, pool: list) -> float:
    started = time.perf_counter()
    if os.path.exists(path):
        os.remove(path)
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode = OFF")
    connection.execute("CREATE TABLE examples (split_name TEXT, client_id TEXT, serialized_example_proto BLOB)")
    connection.execute("CREATE TABLE client_metadata (client_id TEXT, split_name TEXT, num_examples INTEGER)")
    for client in range(num_clients):
        client_id = f"f{client:05d}"
        connection.executemany(
            "INSERT INTO examples VALUES ('train', ?, ?)",
            ((client_id, pool[(client * examples + i) % len(pool)]) for i in range(examples)),
        )
        connection.execute("INSERT INTO client_metadata VALUES (?, 'train', ?)", (client_id, examples))
    connection.execute("CREATE INDEX examples_by_client ON examples (client_id, split_name)")
    connection.commit()
    connection.close()
    return time.perf_counter() - started


def time_clients(make_dataset, client_ids, repeats_first: int = 5) -> tuple:
    """(median first-element latency, median whole-client build+iterate) over the given clients."""
    first, whole = [], []
    for client_id in client_ids[:repeats_first]:
        started = time.perf_counter()
        next(iter(make_dataset(client_id)))
        first.append(time.perf_counter() - started)
    for client_id in client_ids:
        started = time.perf_counter()
        count = sum(1 for _ in make_dataset(client_id))
        whole.append(time.perf_counter() - started)
        assert count > 0
    return statistics.median(first), statistics.median(whole)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=3400)
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--sample", type=int, default=60, help="clients timed per configuration")
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    directory = args.dir or tempfile.mkdtemp(prefix="fedsim_client_data_")
    rng = np.random.RandomState(0)
    pool = [
        datasets.to_example({"pixels": rng.rand(28, 28).astype(np.float32), "label": np.int64(rng.randint(10))}).SerializeToString()
        for _ in range(POOL)
    ]
    features = datasets.emnist.FEATURES
    results = {}
    for num_clients in (args.clients, max(1, args.clients // 10)):
        path = os.path.join(directory, f"emnist_{num_clients}.sqlite")
        seconds = write_file(path, num_clients, args.examples, pool)
        size_mb = os.path.getsize(path) / 2**20
        started = time.perf_counter()
        data = datasets.SqlClientData(path, "train", features)
        open_seconds = time.perf_counter() - started
        sample = [data.client_ids[i] for i in np.random.RandomState(1).choice(num_clients, min(args.sample, num_clients), replace=False)]
        python_first, python_whole = time_clients(data.create_tf_dataset_for_client, sample)
        computation = data.dataset_computation
        graph_first, graph_whole = time_clients(computation, sample)
        results[num_clients] = (python_first, python_whole, graph_first, graph_whole)
        print(f"{num_clients:5d} clients x {args.examples} examples: {size_mb:7.1f} MB written in {seconds:5.1f}s, opened in {open_seconds * 1e3:6.1f} ms")
        print(f"      create_tf_dataset_for_client: first element {python_first * 1e3:6.2f} ms, whole client {python_whole * 1e3:6.2f} ms")
        print(f"      dataset_computation (SqlDataset): first element {graph_first * 1e3:6.2f} ms, whole client {graph_whole * 1e3:6.2f} ms")
        os.remove(path)

    in_memory = datasets.TestClientData({
        f"f{c:05d}": {"label": rng.randint(0, 10, args.examples).astype(np.int32), "pixels": rng.rand(args.examples, 28, 28).astype(np.float32)}
        for c in range(args.sample)
    })
    memory_first, memory_whole = time_clients(in_memory.create_tf_dataset_for_client, in_memory.client_ids)
    print(f"in-memory arrays (baseline): first element {memory_first * 1e3:6.2f} ms, whole client {memory_whole * 1e3:6.2f} ms")
    large, small = results[args.clients], results[max(1, args.clients // 10)]
    print(f"ratio whole client, SQLite / in-memory: {large[1] / memory_whole:.2f} (create_tf_dataset_for_client), "
          f"{large[3] / memory_whole:.2f} (dataset_computation)")
    print(f"ratio {args.clients} / {max(1, args.clients // 10)} clients in the file: first element {large[0] / small[0]:.2f}, "
          f"whole client {large[1] / small[1]:.2f}; dataset_computation {large[2] / small[2]:.2f}, {large[3] / small[3]:.2f}")


if __name__ == "__main__":
    main()
