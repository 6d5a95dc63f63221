"""Writing federated data in TFF's SQLite format (for tests, benchmarks and your own data).

Example::

    write_sqlite("mine.sqlite", {"train": {"alice": {"x": xs, "y": ys}}})
    compress_lzma("mine.sqlite")   # -> mine.sqlite.lzma, the published form
"""

from __future__ import annotations

import lzma
import os
import shutil
import sqlite3
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

__all__ = ["compress_lzma", "to_example", "write_sqlite"]


def to_example(features: Mapping[str, Any]) -> tf.train.Example:
    """A tf.train.Example from one example's arrays: floats, ints and strings, any shape.

    Args:
        features: feature name -> one example's value.

    Returns:
        The `tf.train.Example`.

    Raises:
        TypeError: if a feature's dtype is not float, int or string.
    """
    feature = {}
    for name, value in features.items():
        array = np.asarray(value)
        if array.dtype.kind == "f":
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=array.ravel()))
        elif array.dtype.kind in "iub":
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=array.ravel().astype(np.int64)))
        elif array.dtype.kind in "SUO":
            values = [v.encode() if isinstance(v, str) else bytes(v) for v in array.ravel().tolist()]
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        else:
            raise TypeError(f"to_example: feature {name!r} has unsupported dtype {array.dtype}")
    return tf.train.Example(features=tf.train.Features(feature=feature))


def write_sqlite(path: str, splits: Mapping[str, Mapping[str, Mapping[str, Any]]], index: bool = True) -> str:
    """Writes `{split_name: {client_id: {feature: array with one row per example}}}` to `path`.

    The file has TFF's layout (tables `examples` and `client_metadata`), so TFF's loaders and
    `SqlClientData` read it; tests use it to write the datasets they load.

    Args:
        path: the `.sqlite` file to write.
        splits: the data, split -> client -> feature -> rows.
        index: create an index on `examples(client_id, split_name)`, so a client's read touches only its rows.

    Returns:
        `path`.

    Example:
        >>> write_sqlite("/tmp/tiny.sqlite", {"train": {"c0": {"label": np.array([1, 2])}}})
    """
    partial = f"{path}.partial-{os.getpid()}"
    connection = sqlite3.connect(partial)
    try:
        connection.execute("CREATE TABLE examples (split_name TEXT NOT NULL, client_id TEXT NOT NULL, serialized_example_proto BLOB NOT NULL)")
        connection.execute("CREATE TABLE client_metadata (client_id TEXT NOT NULL, split_name TEXT NOT NULL, num_examples INTEGER NOT NULL)")
        for split_name, clients in splits.items():
            for client_id, arrays in clients.items():
                count = len(next(iter(arrays.values())))
                rows = (
                    (split_name, client_id, to_example({k: v[i] for k, v in arrays.items()}).SerializeToString())
                    for i in range(count)
                )
                connection.executemany("INSERT INTO examples VALUES (?, ?, ?)", rows)
                connection.execute("INSERT INTO client_metadata VALUES (?, ?, ?)", (client_id, split_name, count))
        if index:
            connection.execute("CREATE INDEX examples_by_client ON examples (client_id, split_name)")
        connection.commit()
    finally:
        connection.close()
    os.replace(partial, path)
    return path


def compress_lzma(path: str) -> str:
    """Writes `path + ".lzma"` (the published form) and returns its path.

    Args:
        path: the file to compress.

    Returns:
        The compressed file's path.
    """
    with open(path, "rb") as source, lzma.open(path + ".lzma", "wb") as target:
        shutil.copyfileobj(source, target, length=1 << 20)
    return path + ".lzma"
