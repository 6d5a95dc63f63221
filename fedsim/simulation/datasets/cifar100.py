"""Federated CIFAR-100 (TFF's `cifar100.sqlite.lzma`): 500 train and 100 test clients.

Elements are `OrderedDict(coarse_label=int64[], image=uint8[32, 32, 3], label=int64[])`; the
file stores the pixels as int64, cast to uint8 here as TFF does.
"""

from __future__ import annotations

import collections
from typing import Optional, Tuple

import tensorflow as tf

from fedsim.simulation.datasets.client_data import ClientData
from fedsim.simulation.datasets.files import locate_database
from fedsim.simulation.datasets.sql_client_data import SqlClientData

__all__ = ["FEATURES", "load_data"]

FEATURES = {
    "coarse_label": tf.io.FixedLenFeature([], tf.int64),
    "image": tf.io.FixedLenFeature([32, 32, 3], tf.int64),
    "label": tf.io.FixedLenFeature([], tf.int64),
}


def _to_element(dataset: tf.data.Dataset) -> tf.data.Dataset:
    return dataset.map(
        lambda e: collections.OrderedDict(coarse_label=e["coarse_label"], image=tf.cast(e["image"], tf.uint8), label=e["label"])
    )


def load_data(cache_dir: Optional[str] = None, download: Optional[bool] = None) -> Tuple[ClientData, ClientData]:
    """`(train, test)` from `cifar100.sqlite(.lzma)` in `cache_dir`."""
    path = locate_database("cifar100", cache_dir, download)
    return tuple(SqlClientData(path, split, FEATURES).preprocess(_to_element) for split in ("train", "test"))
