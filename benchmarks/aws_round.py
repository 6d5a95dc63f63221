"""Seconds per round, and handler seconds per round, through the serverless server on the local stack.

For MLPs of about 1 MB and 20 MB of weights, with 3, 10 and 50 silos (each holding ~100
EMNIST-shaped examples), it runs a warm-up round and measured rounds of FedAvg on the local stack
and, on the same data in the same run, the plain-TensorFlow lower bound of the same arithmetic
(`fedavg.Raw`: one traced `tf.function` per client epoch, batches sliced from tensors, numpy
averaging; client SGD 0.02, server SGD 1.0) and fedsim's local context. It prints per
configuration: seconds per round of each, the local stack's ratio to the lower bound; the
handler's seconds per round (all its invocations for the round: judging each silo's upload,
then aggregating and updating); and the
split of a serverless round: prepare + publish -> delivery -> work -> upload/record -> stream +
claim -> aggregate -> update -> answer seen by the caller.

Silo agents run `SiloAgent` in threads inside a few worker processes (`--agent-processes`), so
50 silos fit 2 cores; each silo still has its own credentials, queue and data file.

    .venv/bin/python benchmarks/aws_round.py [--rounds 2] [--silos 3 10 50] [--sizes 1 20] [--aggregators plain secure]

With `--aggregators plain secure secure+` each configuration runs the weighted mean,
`learning.secure_aggregator()` (SecAgg between the silos and the handler) and the same with
SecAgg+ neighbourhoods of `--neighbours` (when fewer than the silos), and prints the bytes one
silo uploads and writes as protocol items.
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import fedavg  # noqa: E402  (benchmarks/fedavg.py: the plain-TensorFlow lower bound)
import fedsim  # noqa: E402
from fedsim import aws, learning, simulation  # noqa: E402
from fedsim.core import context_stack  # noqa: E402
from fedsim.core.secagg import crypto  # noqa: E402
from fedsim.learning import optimizers  # noqa: E402

ELEMENT = collections.OrderedDict(x=tf.TensorSpec([28, 28, 1], tf.float32), y=tf.TensorSpec([], tf.int32))
INPUT_SPEC = collections.OrderedDict(x=tf.TensorSpec([None, 28, 28, 1], tf.float32), y=tf.TensorSpec([None], tf.int32))
CLASSES = 62


def hidden_units(megabytes: float) -> int:
    """The hidden width of a 784-h-62 MLP whose float32 weights take about `megabytes` MB."""
    return max(1, round((megabytes * 1e6 / 4 - CLASSES) / (784 + 1 + CLASSES)))


def keras_mlp(megabytes: float) -> keras.Model:
    units = hidden_units(megabytes)
    return keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                             keras.layers.Dense(units, activation="relu"), keras.layers.Dense(CLASSES)])


def build_process(megabytes: float, secure: bool = False):
    def model_fn():
        return learning.from_keras_model(keras_mlp(megabytes), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                                         input_spec=INPUT_SPEC, metrics=[keras.metrics.SparseCategoricalAccuracy()])

    # the lower bound's arithmetic: client SGD 0.02, server SGD 1.0, example-weighted
    options = {"model_aggregator": learning.secure_aggregator()} if secure else {}
    return learning.build_weighted_fed_avg(model_fn, lambda: optimizers.build_sgdm(fedavg.CLIENT_LR),
                                           server_optimizer_fn=lambda: optimizers.build_sgdm(fedavg.SERVER_LR), **options)


@fedsim.tf_computation(fedsim.SequenceType(ELEMENT))
def batch(dataset):
    return dataset.batch(20)


def serve_silos(spec_path: str) -> None:
    """Worker mode: run the silo agents listed in `spec_path` in threads until they are done."""
    with open(spec_path) as stream:
        spec = json.load(stream)
    threads = []
    for silo in spec["silos"]:
        config = aws.StackConfig.from_json(open(silo["config"]).read())
        with np.load(silo["data"]) as archive:
            arrays = collections.OrderedDict(x=archive["x"], y=archive["y"])
        identity = crypto.identity_from_bytes(base64.b64decode(silo["identity"]))
        pinned = {k: base64.b64decode(v) for k, v in spec["pinned"].items()}
        agent = aws.SiloAgent(config, silo["id"], tf.data.Dataset.from_tensor_slices(arrays), identity=identity,
                              pinned_identities=pinned)
        thread = threading.Thread(target=agent.run, kwargs=dict(stop_after_rounds=spec["rounds"], idle_timeout=600), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()


class HandlerClock:
    """Wraps the local stack's stream delivery: seconds the aggregation handler spends, in total."""

    def __init__(self, stack: aws.LocalStack):
        self.seconds = 0.0
        self._deliver = stack.deliver_records
        stack.deliver_records = self

    def __call__(self, records: list) -> None:
        started = time.perf_counter()
        try:
            self._deliver(records)
        finally:
            self.seconds += time.perf_counter() - started


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


def raw_seconds(megabytes: float, process, arrays: list, rounds: int) -> float:
    """The plain-TensorFlow lower bound of the same rounds (warm-up, then the median)."""
    with context_stack.execution_context(fedsim.LocalExecutionContext()):
        initial = [np.asarray(w) for w in process.initialize().global_model_weights.trainable]
    raw = fedavg.Raw("mlp", initial, model=keras_mlp(megabytes))
    ids = list(range(len(arrays)))
    raw.round(arrays, ids)  # warm-up: traces the client function
    return statistics.median(raw.round(arrays, ids)[0] for _ in range(rounds))


def run_size(megabytes: float, process, raw: float, local: float, stack: aws.LocalStack, clock: HandlerClock,
             silo_ids: list, rounds: int, neighbours=None) -> None:
    with context_stack.execution_context(fedsim.LocalExecutionContext()):
        state = process.initialize()
    size = sum(np.asarray(w).nbytes for w in tf.nest.flatten(state.global_model_weights)) / 1e6
    with aws.execution_context(stack, silos=silo_ids, preprocess=batch, round_deadline_seconds=1200,
                               secure_neighbours=neighbours if neighbours and neighbours + 1 < len(silo_ids) else None) as context:
        process.next(state, silo_ids)  # warm-up: phases uploaded, silos cache the work computation
        round_times, handler_times, splits = [], [], []
        current = state
        for _ in range(rounds):
            handler_before = clock.seconds
            started = time.time()
            output = process.next(current, silo_ids)
            finished = time.time()
            round_times.append(finished - started)
            handler_times.append(clock.seconds - handler_before)
            splits.append(split(context.last_report.rounds[0], started, finished))
            current = output.state
        uploaded = upload_bytes(stack, context.last_report.run_id, silo_ids)
    serverless = statistics.median(round_times)
    print(f"{size:5.1f} MB model, {len(silo_ids):2d} silos: plain-TF lower bound {raw:7.3f} s/round, fedsim local context "
          f"{local:7.3f} ({local / raw:4.2f}x), local stack {serverless:7.3f} s/round ({serverless / raw:5.1f}x the lower bound); "
          f"handler {statistics.median(handler_times):6.3f} s/round; per silo: upload {uploaded[0] / 1e6:7.3f} MB, "
          f"protocol items {uploaded[1] / 1e3:6.1f} KB", flush=True)
    stages = {name: statistics.median(s[name] for s in splits) for name in splits[0]}
    print("      split: " + ", ".join(f"{name} {seconds:.3f}s" for name, seconds in stages.items()), flush=True)


def upload_bytes(stack: aws.LocalStack, run_id: str, silo_ids: list) -> tuple:
    """Median bytes one silo sent in the run's last round: its upload (S3), and its secure-protocol
    items (DynamoDB; 0 in a plain round)."""
    s3, store = stack.config.client("s3"), aws.store.Store(stack.config)
    objects, items = [], []
    for silo in silo_ids:
        listed = s3.list_objects_v2(Bucket=stack.config.bucket, Prefix=f"silos/{silo}/{run_id}/").get("Contents", [])
        last = max((e for e in listed if e["Key"].endswith("work.npz")), key=lambda e: e["Key"], default=None)
        objects.append(last["Size"] if last else 0)
        step = last["Key"].split("/round-")[1].split("/")[0] if last else "1"
        records = store.query_partition(silo)
        items.append(sum(len(r.get("secagg", "")) + 100 for r in records if r["sk"].startswith(f"{run_id}#{step}#sa#")))
    return statistics.median(objects), statistics.median(items)


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--silos", type=int, nargs="+", default=[3, 10, 50])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 20], help="model sizes in MB")
    parser.add_argument("--agent-processes", type=int, default=2, help="worker processes that run the silo agents")
    parser.add_argument("--aggregators", nargs="+", default=["plain"], choices=["plain", "secure", "secure+"],
                        help="plain: the weighted mean; secure: learning.secure_aggregator() (SecAgg on the silos); "
                             "secure+: the same with SecAgg+ neighbourhoods (--neighbours)")
    parser.add_argument("--neighbours", type=int, default=8, help="SecAgg+'s neighbours per silo (secure+)")
    parser.add_argument("--serve-silos", help=argparse.SUPPRESS)  # worker mode
    args = parser.parse_args()
    if args.serve_silos:
        serve_silos(args.serve_silos)
        return
    workdir = tempfile.mkdtemp(prefix="fedsim_aws_bench_")
    print(f"{os.cpu_count()} cores; silo agents in {args.agent_processes} processes; {args.rounds} measured rounds after a warm-up",
          flush=True)
    processes = {(size, kind): build_process(size, kind != "plain") for size in args.sizes for kind in args.aggregators}
    for num_silos in args.silos:
        silo_ids = [f"silo{i:03d}" for i in range(num_silos)]
        arrays = simulation.emnist_like_client_arrays(num_silos, seed=0, min_examples=90, max_examples=110)
        paths = {}
        for silo, (pixels, labels) in zip(silo_ids, arrays):
            paths[silo] = os.path.join(workdir, f"{silo}.npz")
            np.savez(paths[silo], x=pixels, y=labels)
        local_data = [tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=p, y=labels)).batch(20) for p, labels in arrays]
        # The baseline first, on a quiet machine (no stack, no silo processes yet).
        baselines = {key: local_seconds(process, local_data, args.rounds) for key, process in processes.items()}
        lower_bounds = {size: raw_seconds(size, processes[(size, args.aggregators[0])], arrays, args.rounds) for size in args.sizes}
        with aws.LocalStack(silo_ids, silo_visibility_timeout=600) as stack:
            clock = HandlerClock(stack)
            rounds_per_silo = len(processes) * (args.rounds + 1)
            identities = {silo: crypto.identity_key() for silo in silo_ids}
            pinned = {silo: base64.b64encode(crypto.public_bytes(key)).decode() for silo, key in identities.items()}
            silo_specs = []
            for silo in silo_ids:
                config = os.path.join(workdir, f"stack{num_silos}-{silo}.json")
                with open(config, "w") as stream:
                    stream.write(stack.silo_config(silo).to_json())  # each silo its own credentials
                silo_specs.append({"id": silo, "config": config, "data": paths[silo],
                                   "identity": base64.b64encode(crypto.identity_private_bytes(identities[silo])).decode()})
            workers = []
            for index in range(min(args.agent_processes, num_silos)):
                spec = os.path.join(workdir, f"agents{num_silos}-{index}.json")
                with open(spec, "w") as stream:
                    json.dump({"rounds": rounds_per_silo, "silos": silo_specs[index::args.agent_processes], "pinned": pinned}, stream)
                workers.append(subprocess.Popen([sys.executable, __file__, "--serve-silos", spec],
                                                env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            try:
                for (size, kind), process in processes.items():
                    print(f"  [{kind}]", end=" ", flush=True)
                    run_size(size, process, lower_bounds[size], baselines[(size, kind)], stack, clock, silo_ids, args.rounds,
                             args.neighbours if kind == "secure+" else None)
            finally:
                for worker in workers:
                    worker.wait(timeout=600) if worker.poll() is None else None


if __name__ == "__main__":
    main()
