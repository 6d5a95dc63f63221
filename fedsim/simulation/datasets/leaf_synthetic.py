"""LEAF's Synthetic(alpha, beta) federated logistic-regression data (FedProx, Li et al. 2020).

The published generating process, per client k: `u_k ~ N(0, alpha)`, `B_k ~ N(0, beta)`;
the client's model `W_k ~ N(u_k, 1)` (60 x 10) and `b_k ~ N(u_k, 1)`; its input mean
`v_k ~ N(B_k, 1)` (60); inputs `x ~ N(v_k, Sigma)` with `Sigma = diag(j ** -1.2)`; labels
`y = argmax(softmax(x W_k + b_k))`. `alpha` controls how much the clients' models differ,
`beta` how much their inputs do. Client sizes follow LEAF's `lognormal(4, 2) + 50`.

Example::

    data = leaf_synthetic.load_data(alpha=1.0, beta=1.0, num_clients=30, seed=0)
"""

from __future__ import annotations

import collections
from typing import Optional

import numpy as np

from fedsim.simulation.datasets.client_data import ClientData, TestClientData

__all__ = ["load_data", "NUM_FEATURES", "NUM_CLASSES"]

NUM_FEATURES = 60
NUM_CLASSES = 10


def load_data(
    alpha: float, beta: float, num_clients: int = 30, seed: int = 0, max_examples: Optional[int] = None
) -> ClientData:
    """Elements `OrderedDict(x=float32[60], y=int32[])`; `max_examples` caps a client's size."""
    if alpha < 0 or beta < 0:
        raise ValueError(f"alpha and beta are variances and must be >= 0, got alpha={alpha}, beta={beta}")
    if num_clients < 1:
        raise ValueError(f"num_clients must be at least 1, got {num_clients}")
    rng = np.random.RandomState(seed)
    sizes = rng.lognormal(4, 2, num_clients).astype(int) + 50
    if max_examples is not None:
        sizes = np.minimum(sizes, max_examples)
    stddevs = np.arange(1, NUM_FEATURES + 1, dtype=np.float64) ** -0.6  # sqrt of j ** -1.2
    width = len(str(num_clients - 1))
    clients = {}
    for k, size in enumerate(sizes):
        model_mean = rng.normal(0, np.sqrt(alpha))
        input_mean_center = rng.normal(0, np.sqrt(beta))
        weights = rng.normal(model_mean, 1, (NUM_FEATURES, NUM_CLASSES))
        bias = rng.normal(model_mean, 1, NUM_CLASSES)
        input_mean = rng.normal(input_mean_center, 1, NUM_FEATURES)
        x = input_mean + rng.normal(0, 1, (size, NUM_FEATURES)) * stddevs
        y = np.argmax(x @ weights + bias, axis=1)  # argmax of softmax = argmax of the logits
        clients[f"f_{k:0{width}d}"] = collections.OrderedDict(x=x.astype(np.float32), y=y.astype(np.int32))
    return TestClientData(clients)
