"""Accuracy against epsilon: FedAvg without privacy, with central, local, distributed and record-level DP.

Workload: synthetic EMNIST-like data (`emnist_like_client_arrays`, 62 classes), 100 clients of
80 to 120 examples, 10 drawn uniformly per round, `--rounds` rounds; a 784-62 softmax, client
SGD 0.05 (one epoch, batch 20), server SGD 1.0, unweighted mean (the DP aggregators' kind).
Accuracy on 2,000 held-out examples after the last round.

- central: `DifferentiallyPrivateFactory.gaussian_fixed(z, clients_per_round=10, clip)`;
  epsilon from the `PrivacyLedger` (PLD, Poisson sampling at 10/100, delta 1e-5).
- local: `local_gaussian_factory(z, clip, UnweightedMeanFactory())`; epsilon of the most
  exposed client over the rounds it actually took part in (the ledger's per-client rule applied
  to that many rounds), and the ledger's own worst case (a client in every round).

- distributed: `UnweightedMeanFactory(DistributedDpSumFactory(z, 10, bits=20, l2_clip=clip))`,
  each client's discrete Gaussian share summed by the secure-sum intrinsic; epsilon from the
  ledger (Renyi DP of the distributed discrete Gaussian, no amplification by sampling claimed).
- record: DP-SGD in each client (`build_dp_sgd(0.05, l2_norm_clip=--record-clip, z)`), plain
  mean on the server; epsilon per *record* of the most exposed client (its rounds, its batches
  as Poisson sampling at 20/its examples, the smallest client's rate: the worst case).

    .venv/bin/python benchmarks/dp_utility.py [--rounds 30] [--clip 0.5] [--record-clip 1.0] [--noise 0.5 1 2]
        [--mechanisms none central local distributed record] [--json rows.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from fedsim import aggregators, learning, simulation  # noqa: E402
from fedsim.learning import optimizers  # noqa: E402

NUM_CLIENTS, COHORT, DELTA = 100, 10, 1e-5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--clip", type=float, default=0.5)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--record-clip", type=float, default=1.0)
    parser.add_argument("--mechanisms", nargs="+", default=["none", "central", "local", "distributed", "record"])
    parser.add_argument("--json", help="also write the rows here (the tutorial's plot reads them)")
    args = parser.parse_args()
    arrays = simulation.emnist_like_client_arrays(NUM_CLIENTS + 20, seed=0)
    datasets = [tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x.reshape(-1, 784), y=y)).batch(20)
                for x, y in arrays[:NUM_CLIENTS]]
    test_x = np.concatenate([x.reshape(-1, 784) for x, _ in arrays[NUM_CLIENTS:]])[:2000]
    test_y = np.concatenate([y for _, y in arrays[NUM_CLIENTS:]])[:2000]
    spec = datasets[0].element_spec

    def model_fn():
        model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(62, kernel_initializer="zeros")])
        return learning.from_keras_model(model, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), input_spec=spec)

    sample = simulation.build_uniform_sampling_fn(list(range(NUM_CLIENTS)), random_seed=0)
    participation = collections.Counter(c for r in range(1, args.rounds + 1) for c in sample(r, COHORT))

    def run(aggregator, client_optimizer=lambda: optimizers.build_sgdm(0.05)):
        process = learning.build_unweighted_fed_avg(model_fn, client_optimizer, model_aggregator=aggregator)
        ledger = aggregators.PrivacyLedger(population_size=NUM_CLIENTS, delta=DELTA)
        state = simulation.run_training_process(process, lambda r: [datasets[c] for c in sample(r, COHORT)], args.rounds,
                                                privacy_ledger=ledger, verbose=0)
        kernel, bias = (np.asarray(w) for w in process.get_model_weights(state).trainable)
        return float(np.mean(np.argmax(test_x @ kernel + bias, axis=1) == test_y)), ledger

    rows = [("none", "-", *run(None))] if "none" in args.mechanisms else []
    for z in args.noise if "central" in args.mechanisms else []:
        rows.append(("central", z, *run(aggregators.DifferentiallyPrivateFactory.gaussian_fixed(z, COHORT, args.clip))))
    for z in args.noise if "local" in args.mechanisms else []:
        rows.append(("local", z, *run(aggregators.local_gaussian_factory(z, args.clip, aggregators.UnweightedMeanFactory()))))
    for z in args.noise if "distributed" in args.mechanisms else []:
        rows.append(("distributed", z, *run(aggregators.UnweightedMeanFactory(
            aggregators.DistributedDpSumFactory(z, COHORT, bits=20, l2_clip=args.clip)))))
    for z in args.noise if "record" in args.mechanisms else []:
        rows.append(("record", z, *run(None, lambda z=z: optimizers.build_dp_sgd(0.05, l2_norm_clip=args.record_clip, noise_multiplier=z))))
    smallest = min(len(y) for _, y in arrays[:NUM_CLIENTS])
    print(f"{NUM_CLIENTS} clients, {COHORT} per round, {args.rounds} rounds, clip {args.clip:g}, delta {DELTA:g}; "
          f"the most exposed client took part in {max(participation.values())} rounds")
    print(f"{'mechanism':<11} {'z':>5} {'accuracy':>9} {'epsilon':>12} {'client epsilon (its rounds / every round)':>44}")
    table = []
    for kind, z, accuracy, ledger in rows:
        if kind == "record":
            epsilon, client = "-", f"{optimizers.dp_sgd_epsilon(z, 20, smallest, 1, max(participation.values()), DELTA):.3g} per record"
        elif kind == "local":
            most = max(participation.values())
            exposed = aggregators.PrivacyLedger(delta=DELTA)
            exposed.rounds = [r for r in ledger.rounds][:most]  # the same per-round mechanism, that many rounds
            epsilon, client = "-", f"{exposed.local_epsilon():.3g} / {ledger.local_epsilon():.3g}"
        else:
            epsilon, client = (f"{ledger.epsilon():.3g}" if kind in ("central", "distributed") else "-"), "-"
        print(f"{kind:<11} {z!s:>5} {accuracy:9.4f} {epsilon:>12} {client:>44}")
        table.append({"mechanism": kind, "z": z, "accuracy": accuracy, "epsilon": epsilon, "client_epsilon": client})
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(table, stream, indent=1)


if __name__ == "__main__":
    main()
