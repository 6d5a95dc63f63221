"""Accuracy against epsilon: FedAvg without privacy, with central DP and with local DP.

Workload: synthetic EMNIST-like data (`emnist_like_client_arrays`, 62 classes), 100 clients of
80 to 120 examples, 10 drawn uniformly per round, `--rounds` rounds; a 784-62 softmax, client
SGD 0.05 (one epoch, batch 20), server SGD 1.0, unweighted mean (the DP aggregators' kind).
Accuracy on 2,000 held-out examples after the last round.

- central: `DifferentiallyPrivateFactory.gaussian_fixed(z, clients_per_round=10, clip)`;
  epsilon from the `PrivacyLedger` (PLD, Poisson sampling at 10/100, delta 1e-5).
- local: `local_gaussian_factory(z, clip, UnweightedMeanFactory())`; epsilon of the most
  exposed client over the rounds it actually took part in (the ledger's per-client rule applied
  to that many rounds), and the ledger's own worst case (a client in every round).

    .venv/bin/python benchmarks/dp_utility.py [--rounds 30] [--clip 0.5] [--noise 0.5 1 2]

Distributed DP and record-level DP (issue 25, items 3 and 4) are not built yet.
"""

from __future__ import annotations

import argparse
import collections
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

    def run(aggregator):
        process = learning.build_unweighted_fed_avg(model_fn, lambda: optimizers.build_sgdm(0.05), model_aggregator=aggregator)
        ledger = aggregators.PrivacyLedger(population_size=NUM_CLIENTS, delta=DELTA)
        state = simulation.run_training_process(process, lambda r: [datasets[c] for c in sample(r, COHORT)], args.rounds,
                                                privacy_ledger=ledger, verbose=0)
        kernel, bias = (np.asarray(w) for w in process.get_model_weights(state).trainable)
        return float(np.mean(np.argmax(test_x @ kernel + bias, axis=1) == test_y)), ledger

    rows = [("none", "-", *run(None))]
    for z in args.noise:
        rows.append(("central", z, *run(aggregators.DifferentiallyPrivateFactory.gaussian_fixed(z, COHORT, args.clip))))
    for z in args.noise:
        rows.append(("local", z, *run(aggregators.local_gaussian_factory(z, args.clip, aggregators.UnweightedMeanFactory()))))
    print(f"{NUM_CLIENTS} clients, {COHORT} per round, {args.rounds} rounds, clip {args.clip:g}, delta {DELTA:g}; "
          f"the most exposed client took part in {max(participation.values())} rounds")
    print(f"{'mechanism':<10} {'z':>5} {'accuracy':>9} {'epsilon':>12} {'client epsilon (its rounds / every round)':>44}")
    for kind, z, accuracy, ledger in rows:
        if kind == "local":
            most = max(participation.values())
            exposed = aggregators.PrivacyLedger(delta=DELTA)
            exposed.rounds = [r for r in ledger.rounds][:most]  # the same per-round mechanism, that many rounds
            epsilon, client = "-", f"{exposed.local_epsilon():.3g} / {ledger.local_epsilon():.3g}"
        else:
            epsilon, client = (f"{ledger.epsilon():.3g}" if kind == "central" else "-"), "-"
        print(f"{kind:<10} {z!s:>5} {accuracy:9.4f} {epsilon:>12} {client:>44}")


if __name__ == "__main__":
    main()
