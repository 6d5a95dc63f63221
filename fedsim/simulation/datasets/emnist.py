"""Federated EMNIST (TFF's `emnist_all.sqlite.lzma`) and synthetic stand-ins.

Elements are `OrderedDict(label=int32[], pixels=float32[28, 28])`, as in TFF.

Example::

    train, test = emnist.load_data(only_digits=True, cache_dir="/data/tff")
"""

from __future__ import annotations

import collections
from typing import Optional, Tuple

import tensorflow as tf

from fedsim.simulation import synthetic
from fedsim.simulation.datasets.client_data import ClientData, TestClientData
from fedsim.simulation.datasets.files import locate_database
from fedsim.simulation.datasets.sql_client_data import SqlClientData

__all__ = ["FEATURES", "load_data", "get_synthetic", "synthetic_client_data"]

FEATURES = {
    "pixels": tf.io.FixedLenFeature([28, 28], tf.float32),
    "label": tf.io.FixedLenFeature([], tf.int32),  # stored as int64, parsed into int32 as TFF gives it
}


def load_data(only_digits: bool = True, cache_dir: Optional[str] = None, download: Optional[bool] = None) -> Tuple[ClientData, ClientData]:
    """`(train, test)`: 3,383 writers of digits (`only_digits`) or 3,400 of all 62 classes."""
    path = locate_database("emnist_all", cache_dir, download)
    prefix = "digits_only" if only_digits else "all"
    return tuple(SqlClientData(path, f"{prefix}_{split}", FEATURES) for split in ("train", "test"))


def synthetic_client_data(
    num_clients: int, only_digits: bool = False, skew: float = 0.8, seed: int = 0, min_examples: int = 80, max_examples: int = 120
) -> ClientData:
    """A seeded, non-IID EMNIST-shaped ClientData: each client's labels lean to a few classes.

    `skew` is the fraction of a client's examples drawn from its own favourite classes.
    """
    classes = 10 if only_digits else synthetic.NUM_CLASSES
    arrays = synthetic.emnist_like_client_arrays(
        num_clients, seed=seed, skew=skew, min_examples=min_examples, max_examples=max_examples, num_classes=classes
    )
    width = len(str(num_clients - 1))
    return TestClientData({
        f"client_{index:0{width}d}": collections.OrderedDict(label=labels, pixels=pixels[..., 0])
        for index, (pixels, labels) in enumerate(arrays)
    })


def get_synthetic() -> ClientData:
    """A tiny fixed ClientData with TFF's EMNIST element structure: two clients of ten digits."""
    return synthetic_client_data(2, only_digits=True, seed=0, min_examples=10, max_examples=10)


