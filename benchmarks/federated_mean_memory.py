"""Peak memory of `federated_mean` over 10 vs 1000 clients of a 10 MB value.

Each client's value is made by client work (a `federated_map` of a tf_computation that draws
2.5M float32 from the client's seed), so nothing holds all client values unless the context
does. Each size runs in its own process and reports its peak RSS; the figure that matters is
the ratio of the two (flat means O(value), not O(clients x value)).

    .venv/bin/python benchmarks/federated_mean_memory.py            # 10 and 1000 clients
    .venv/bin/python benchmarks/federated_mean_memory.py --clients 10 --child
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

VALUE_FLOATS = 2_500_000  # 10 MB of float32


def child(num_clients: int) -> None:
    import numpy as np
    import tensorflow as tf

    import fedsim

    @fedsim.tf_computation(tf.int32)
    def client_value(seed):
        return tf.random.stateless_normal([VALUE_FLOATS], seed=tf.stack([seed, 0]))

    @fedsim.federated_computation(fedsim.FederatedType(tf.int32, fedsim.CLIENTS))
    def mean_of_client_values(seeds):
        return fedsim.federated_mean(fedsim.federated_map(client_value, seeds))

    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = mean_of_client_values(list(range(num_clients)))
    seconds = time.perf_counter() - start
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert result.shape == (VALUE_FLOATS,) and np.isfinite(result).all()
    print(f"{num_clients} {peak_rss} {baseline_rss} {seconds:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="*", default=[10, 1000])
    parser.add_argument("--child", action="store_true", help="measure one size in this process")
    args = parser.parse_args()
    if args.child:
        child(args.clients[0])
        return
    rows = {}
    for num_clients in args.clients:
        output = subprocess.run(
            [sys.executable, __file__, "--child", "--clients", str(num_clients)],
            check=True, capture_output=True, text=True,
        ).stdout.split()
        _, peak_kib, baseline_kib, seconds = output[-4:]
        rows[num_clients] = (int(peak_kib) / 1024, int(baseline_kib) / 1024, float(seconds))
    print(f"federated_mean of a {VALUE_FLOATS * 4 / 1e6:.0f} MB float32 value per client")
    print(f"{'clients':>8} {'peak RSS MiB':>13} {'RSS before MiB':>15} {'seconds':>8} {'values if held MiB':>19}")
    for num_clients, (peak, baseline, seconds) in rows.items():
        held = num_clients * VALUE_FLOATS * 4 / 2**20
        print(f"{num_clients:>8} {peak:>13.0f} {baseline:>15.0f} {seconds:>8.2f} {held:>19.0f}")
    sizes = sorted(rows)
    if len(sizes) >= 2:
        ratio = rows[sizes[-1]][0] / rows[sizes[0]][0]
        print(f"peak RSS ratio {sizes[-1]} vs {sizes[0]} clients: {ratio:.3f} (flat = 1.0)")


if __name__ == "__main__":
    main()
