"""Synthetic EMNIST-shaped federated data: no files, seeded, non-IID by label skew.

Each client has 28x28x1 float32 images and int32 labels in [0, 62); most of a client's labels
come from a few classes of its own (a fraction `skew` of them), so clients differ as real ones
do. Each class has a fixed random prototype image; an example is its class's prototype plus
noise, so a model can learn the task.
"""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf

__all__ = ["emnist_like_client_arrays", "emnist_like_client_datasets", "EMNIST_INPUT_SPEC"]

NUM_CLASSES = 62
_PROTOTYPES = np.random.RandomState(20261121).rand(NUM_CLASSES, 28, 28, 1).astype(np.float32)
EMNIST_INPUT_SPEC = collections.OrderedDict(
    x=tf.TensorSpec([None, 28, 28, 1], tf.float32), y=tf.TensorSpec([None], tf.int32)
)


def emnist_like_client_arrays(
    num_clients: int, seed: int = 0, min_examples: int = 80, max_examples: int = 120, skew: float = 0.8, classes_per_client: int = 3,
    num_classes: int = NUM_CLASSES,
) -> list:
    """`[(pixels, labels), ...]`, one pair of numpy arrays per client.

    Synthetic, EMNIST-shaped (28x28x1 float32 pixels, int32 labels), non-IID and learnable: used
    where tests and benchmarks need realistic clients without a download.

    Args:
        num_clients: how many clients (>= 1).
        seed: the seed; the same seed gives the same data.
        min_examples: the fewest examples a client holds.
        max_examples: the most examples a client holds.
        skew: how much each client's labels concentrate on its own classes (0 uniform, 1 only its own).
        classes_per_client: how many classes a client favours.
        num_classes: the number of labels (at most 62, EMNIST's).

    Returns:
        A list of `(pixels[n, 28, 28, 1], labels[n])` numpy pairs.

    Raises:
        ValueError: if an argument is out of range.

    Example:
        >>> pixels, labels = fedsim.simulation.emnist_like_client_arrays(10)[0]
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be at least 1, got {num_clients}")
    if not 1 <= num_classes <= NUM_CLASSES:
        raise ValueError(f"num_classes must be from 1 to {NUM_CLASSES}, got {num_classes}")
    if not 0.0 <= skew <= 1.0:
        raise ValueError(f"skew must be in [0, 1], got {skew}")
    rng = np.random.RandomState(seed)
    clients = []
    for _ in range(num_clients):
        n = int(rng.randint(min_examples, max_examples + 1))
        favourite = rng.choice(num_classes, min(classes_per_client, num_classes), replace=False)
        labels = np.where(rng.rand(n) < skew, rng.choice(favourite, n), rng.randint(0, num_classes, n)).astype(np.int32)
        pixels = (0.5 * _PROTOTYPES[labels] + 0.5 * rng.rand(n, 28, 28, 1)).astype(np.float32)
        clients.append((pixels, labels))
    return clients


def emnist_like_client_datasets(num_clients: int, batch_size: int = 20, seed: int = 0, **kwargs) -> list:
    """One batched `tf.data.Dataset` of `{"x", "y"}` per client.

    Args:
        num_clients: how many clients.
        batch_size: the batch size.
        seed: the seed.
        **kwargs: passed to `emnist_like_client_arrays`.

    Returns:
        A list of datasets of `{"x": float32[?, 28, 28, 1], "y": int32[?]}`.

    Raises:
        ValueError: if an argument is out of range.
    """
    return [
        tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=y)).batch(batch_size)
        for x, y in emnist_like_client_arrays(num_clients, seed=seed, **kwargs)
    ]
