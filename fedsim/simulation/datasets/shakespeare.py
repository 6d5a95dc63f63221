"""Federated Shakespeare (TFF's `shakespeare.sqlite.lzma`): one client per speaking role.

Elements are `OrderedDict(snippets=string[])`; splits `train` and `test`.
"""

from __future__ import annotations

import collections
from typing import Optional, Tuple

import tensorflow as tf

from fedsim.simulation.datasets.client_data import ClientData, TestClientData
from fedsim.simulation.datasets.files import locate_database
from fedsim.simulation.datasets.sql_client_data import SqlClientData

__all__ = ["FEATURES", "load_data", "get_synthetic"]

FEATURES = {"snippets": tf.io.FixedLenFeature([], tf.string)}


def load_data(cache_dir: Optional[str] = None, download: Optional[bool] = None) -> Tuple[ClientData, ClientData]:
    """`(train, test)` from `shakespeare.sqlite(.lzma)` in `cache_dir`."""
    path = locate_database("shakespeare", cache_dir, download)
    return tuple(SqlClientData(path, split, FEATURES) for split in ("train", "test"))


def get_synthetic() -> ClientData:
    """Two tiny clients with the element structure of `load_data`."""
    return TestClientData({
        "THE_TRAGEDY_OF_KING_LEAR_KING": collections.OrderedDict(snippets=["Nothing will come of nothing: speak again."]),
        "THE_TEMPEST_PROSPERO": collections.OrderedDict(snippets=["We are such stuff", "As dreams are made on."]),
    })
