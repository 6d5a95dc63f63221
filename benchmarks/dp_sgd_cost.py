"""What record-level DP costs in time: a FedAvg round with DP-SGD clients against plain SGD clients.

Workload: `fedavg.py`'s (synthetic EMNIST-shaped clients of about 110 examples, batch 20, the
MLP and TFF's EMNIST CNN), 10 clients per round, the local context. DP-SGD computes per-example
gradients with `tf.vectorized_map` (one vectorized backward pass per batch) plus the batch's
forward pass for the metrics; plain SGD one backward pass per batch. Median s/round over rounds
2..R, the two processes' rounds interleaved.

    .venv/bin/python benchmarks/dp_sgd_cost.py [--rounds 6] [--models mlp cnn]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fedavg  # noqa: E402

from fedsim import learning  # noqa: E402
from fedsim.learning import optimizers  # noqa: E402
from fedsim.simulation import EMNIST_INPUT_SPEC  # noqa: E402


def _process(kind: str, optimizer_fn):
    def model_fn():
        return learning.from_keras_model(fedavg.keras_model(kind), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                                         input_spec=EMNIST_INPUT_SPEC)

    return learning.build_weighted_fed_avg(model_fn, optimizer_fn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"])
    args = parser.parse_args()
    arrays = fedavg.client_arrays()
    print(f"FedAvg, 10 clients/round, batch {fedavg.BATCH}; median s/round over rounds 2..{args.rounds}")
    print(f"  {'model':<5} {'SGD s':>8} {'DP-SGD s':>9} {'DP-SGD/SGD':>11}")
    for kind in args.models:
        processes = {
            "sgd": _process(kind, lambda: optimizers.build_sgdm(fedavg.CLIENT_LR)),
            "dp": _process(kind, lambda: optimizers.build_dp_sgd(fedavg.CLIENT_LR, l2_norm_clip=1.0, noise_multiplier=1.0)),
        }
        states = {name: process.initialize() for name, process in processes.items()}
        seconds = {name: [] for name in processes}
        for round_num in range(1, args.rounds + 1):
            ids = fedavg.sample(round_num, 10)
            for name, process in processes.items():
                datasets = fedavg.pipeline_datasets(arrays, ids, "bare")
                started = time.perf_counter()
                states[name] = process.next(states[name], datasets).state
                seconds[name].append(time.perf_counter() - started)
        sgd, dp = (statistics.median(seconds[name][1:]) for name in ("sgd", "dp"))
        print(f"  {kind:<5} {sgd:8.3f} {dp:9.3f} {dp / sgd:10.2f}x")


if __name__ == "__main__":
    main()
