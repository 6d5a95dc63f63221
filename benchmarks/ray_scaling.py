"""The Ray context against the local context: per-client overhead, node scaling, driver memory.

Workload: `fedavg.py`'s (synthetic EMNIST-shaped clients of about 110 examples, FedAvg, batch 20,
the MLP and TFF's EMNIST CNN). Each figure comes from a child process of its own, so every Ray
cluster starts and stops clean; every Ray process binds to 127.0.0.1.

- overhead: one machine, one Ray node with 2 CPUs and 2 actors of 1 CPU, against
  `LocalExecutionContext(max_parallel_clients=2)` (the same parallelism); rounds interleaved;
  the median s/round over rounds 2..R and the overhead per client, (Ray - local) / clients.
- nodes: `ray.cluster_utils.Cluster` with 1 node (1 CPU, 1 actor) and with 2 nodes (1 CPU and
  1 actor each; both raylets on this machine's 2 cores), the CNN: s/round and the speed-up.
- memory: the driver's peak RSS over two rounds of 10 and of 1,000 clients, the clients' data
  opened on the workers (`WorkerClientData`, generated from the client id), MLP.

    .venv/bin/python benchmarks/ray_scaling.py [--rounds 4] [--parts overhead nodes memory]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback addresses only

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fedavg  # noqa: E402


def _lazy_clients(count: int):
    """Clients generated from their ids where they are opened (nothing held by the driver)."""
    from fedsim.simulation.datasets import ClientData

    def make(client_id):
        seed = tf.strings.to_hash_bucket_fast(client_id, 2**31 - 1)
        seeds = tf.stack([seed, tf.constant(0, tf.int64)])
        n = 80 + tf.random.stateless_uniform([], seeds, maxval=41, dtype=tf.int64)
        x = tf.random.stateless_uniform(tf.stack([n, 28, 28, 1]), seeds + 1)
        y = tf.random.stateless_uniform(tf.stack([n]), seeds + 2, maxval=fedavg.CLASSES, dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=tf.cast(y, tf.int32)))

    return ClientData.from_clients_and_tf_fn([f"{i:04d}" for i in range(count)], make).preprocess(lambda d: d.batch(fedavg.BATCH))


def overhead_child(kind: str, cohort: int, rounds: int) -> dict:
    import ray

    import fedsim
    from fedsim import simulation

    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    arrays = fedavg.client_arrays()
    process = fedavg.build_process(kind)
    contexts = {"local": fedsim.LocalExecutionContext(max_parallel_clients=2), "ray": simulation.RayExecutionContext(num_actors=2)}
    states = {name: process.initialize() for name in contexts}
    seconds = collections.defaultdict(list)
    for round_num in range(1, rounds + 1):
        ids = np.random.RandomState(round_num).choice(len(arrays), cohort, replace=cohort > len(arrays)).tolist()
        for name, context in contexts.items():
            datasets = fedavg.pipeline_datasets(arrays, ids, "bare")
            started = time.perf_counter()
            with fedsim.execution_context(context):
                states[name] = process.next(states[name], datasets).state
            seconds[name].append(time.perf_counter() - started)
    ray.shutdown()
    return {name: statistics.median(values[1:]) for name, values in seconds.items()}


def nodes_child(kind: str, nodes: int, cohort: int, rounds: int) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    import fedsim
    from fedsim import simulation

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False, "node_ip_address": "127.0.0.1"})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    ray.init(address=cluster.address, log_to_driver=False)
    arrays = fedavg.client_arrays()
    process = fedavg.build_process(kind)
    context = simulation.RayExecutionContext(num_actors=nodes)
    state, seconds = process.initialize(), []
    for round_num in range(1, rounds + 1):
        ids = np.random.RandomState(round_num).choice(len(arrays), cohort, replace=False).tolist()
        datasets = fedavg.pipeline_datasets(arrays, ids, "bare")
        started = time.perf_counter()
        with fedsim.execution_context(context):
            state = process.next(state, datasets).state
        seconds.append(time.perf_counter() - started)
    used = len(context.last_round_nodes)
    ray.shutdown()
    cluster.shutdown()
    return {"seconds": statistics.median(seconds[1:]), "nodes_used": used}


def memory_child(cohort: int) -> dict:
    import ray

    import fedsim
    from fedsim import simulation

    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    process = fedavg.build_process("mlp")
    source = simulation.WorkerClientData(lambda: _lazy_clients(1000))
    context = simulation.RayExecutionContext(num_actors=2)
    state = process.initialize()
    with fedsim.execution_context(context):
        for round_num in range(2):
            ids = [f"{i:04d}" for i in np.random.RandomState(round_num).choice(1000, cohort, replace=False)]
            state = process.next(state, source.datasets(ids)).state
    ray.shutdown()
    return {"peak_rss_mib": fedavg._peak_rss_kib() / 1024}


def _child(*arguments) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *map(str, arguments)], capture_output=True, text=True, timeout=7200)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        raise RuntimeError(f"child {arguments} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--parts", nargs="+", default=["overhead", "nodes", "memory"])
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        result = {"overhead": lambda: overhead_child(rest[0], int(rest[1]), int(rest[2])),
                  "nodes": lambda: nodes_child(rest[0], int(rest[1]), int(rest[2]), int(rest[3])),
                  "memory": lambda: memory_child(int(rest[0]))}[kind]()
        print(json.dumps(result))
        return
    print(f"machine: {os.cpu_count()} cores, TensorFlow {tf.__version__}; median s/round over rounds 2..{args.rounds}")
    if "overhead" in args.parts:
        print("\nRay context (1 node, 2 actors of 1 CPU) vs local context (2 parallel clients), same process and rounds")
        print(f"  {'model':<5} {'clients':>7} {'local s':>9} {'ray s':>9} {'ray/local':>9} {'overhead ms/client':>19}")
        for kind in ("mlp", "cnn"):
            for cohort in (10, 100):
                r = _child("overhead", kind, cohort, args.rounds)
                per_client = (r["ray"] - r["local"]) / cohort * 1000
                print(f"  {kind:<5} {cohort:>7} {r['local']:9.3f} {r['ray']:9.3f} {r['ray'] / r['local']:8.2f}x {per_client:19.2f}")
    if "nodes" in args.parts:
        print("\nThroughput in nodes (CNN, 20 clients/round; each node 1 CPU and 1 actor, both on this machine)")
        one = _child("nodes", "cnn", 1, 20, args.rounds)
        two = _child("nodes", "cnn", 2, 20, args.rounds)
        print(f"  1 node: {one['seconds']:.3f} s/round; 2 nodes: {two['seconds']:.3f} s/round "
              f"(client work on {two['nodes_used']} nodes); speed-up {one['seconds'] / two['seconds']:.2f}x")
    if "memory" in args.parts:
        print("\nDriver peak RSS, clients' data opened on the workers (MLP, two rounds)")
        for cohort in (10, 1000):
            print(f"  {cohort:>5} clients/round: {_child('memory', cohort)['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
