"""Federated Stack Overflow (TFF's `stackoverflow.sqlite.lzma`): one client per user.

Elements are `OrderedDict(creation_date, score=int64, tags, title, tokens, type)` (strings but
`score`). As in TFF, `load_data` returns three ClientData: `train`, `heldout` and `test`.
"""

from __future__ import annotations

from typing import Optional, Tuple

import tensorflow as tf

from fedsim.simulation.datasets.client_data import ClientData
from fedsim.simulation.datasets.files import locate_database
from fedsim.simulation.datasets.sql_client_data import SqlClientData

__all__ = ["FEATURES", "load_data"]

FEATURES = {
    "creation_date": tf.io.FixedLenFeature([], tf.string),
    "score": tf.io.FixedLenFeature([], tf.int64),
    "tags": tf.io.FixedLenFeature([], tf.string),
    "title": tf.io.FixedLenFeature([], tf.string),
    "tokens": tf.io.FixedLenFeature([], tf.string),
    "type": tf.io.FixedLenFeature([], tf.string),
}


def load_data(cache_dir: Optional[str] = None, download: Optional[bool] = None) -> Tuple[ClientData, ClientData, ClientData]:
    """`(train, heldout, test)` from `stackoverflow.sqlite(.lzma)` in `cache_dir`."""
    path = locate_database("stackoverflow", cache_dir, download)
    return tuple(SqlClientData(path, split, FEATURES) for split in ("train", "heldout", "test"))
