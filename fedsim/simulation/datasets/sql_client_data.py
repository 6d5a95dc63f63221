"""`SqlClientData`: TFF's published federated-dataset format, a SQLite file of tf.train.Examples.

The file has a table `examples(split_name, client_id, serialized_example_proto)` and a table
`client_metadata(client_id, split_name, num_examples)`. A client's dataset is read with one
indexed query for its rows only; with `features` (a dict of `tf.io.FixedLenFeature`) the protos
are parsed, and a proto that does not parse is an error naming the file, client and row.

Example::

    train = SqlClientData("emnist_all.sqlite", "digits_only_train",
                          features={"pixels": tf.io.FixedLenFeature([28, 28], tf.float32),
                                    "label": tf.io.FixedLenFeature([], tf.int64)})
"""

from __future__ import annotations

import collections
import os
import sqlite3
import threading
from typing import Any, Mapping, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from fedsim.simulation.datasets.client_data import ClientData, DatasetFn

__all__ = ["SqlClientData", "MalformedDatasetError", "REQUIRED_COLUMNS"]

REQUIRED_COLUMNS = {
    "examples": ("split_name", "client_id", "serialized_example_proto"),
    "client_metadata": ("client_id", "split_name", "num_examples"),
}


class MalformedDatasetError(ValueError):
    """A dataset file is not in the expected format; the message says which file and what."""


def _connect(path: str) -> sqlite3.Connection:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"SqlClientData: no such file {path!r}")
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as error:
        raise MalformedDatasetError(f"{path}: not a readable SQLite database ({error})") from None
    for table, columns in REQUIRED_COLUMNS.items():
        if table not in tables:
            raise MalformedDatasetError(f"{path}: missing table {table!r} (found {sorted(tables)})")
        present = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
        missing = [c for c in columns if c not in present]
        if missing:
            raise MalformedDatasetError(f"{path}: table {table!r} lacks column(s) {missing} (has {sorted(present)})")
    return connection


def _has_client_index(connection: sqlite3.Connection) -> bool:
    for (index_name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'examples'"):
        columns = [row[2] for row in connection.execute(f"PRAGMA index_info('{index_name}')")]
        if columns and columns[0] == "client_id":
            return True
    return False


def _element_spec(features: Mapping[str, tf.io.FixedLenFeature]) -> Any:
    return collections.OrderedDict(
        (name, tf.TensorSpec(feature.shape, feature.dtype)) for name, feature in sorted(features.items())
    )


def _wire_features(features: Mapping[str, tf.io.FixedLenFeature]) -> dict:
    """The features as tf.train.Example stores them: any integer dtype is parsed as int64."""
    return {
        name: tf.io.FixedLenFeature(f.shape, tf.int64, f.default_value) if f.dtype.is_integer and f.dtype != tf.int64 else f
        for name, f in features.items()
    }


def _cast(parsed: Mapping[str, tf.Tensor], spec: Mapping[str, tf.TensorSpec]) -> collections.OrderedDict:
    """Parsed features in the declared order and dtypes (int64 to a declared int32, exactly)."""
    return collections.OrderedDict(
        (name, parsed[name] if parsed[name].dtype == s.dtype else tf.cast(parsed[name], s.dtype)) for name, s in spec.items()
    )


def _parse_problem(proto: bytes, features: Mapping[str, Any]) -> Optional[str]:
    """Why one serialized proto does not parse with `features`, or None if it does."""
    try:
        example = tf.train.Example.FromString(proto)
    except Exception:  # protobuf's DecodeError, whose module path varies by implementation
        return "cannot parse the tf.train.Example (not a serialized proto)"
    for name, feature in features.items():
        if name not in example.features.feature:
            return f"the tf.train.Example has no feature {name!r}"
    try:
        tf.io.parse_single_example(tf.constant(proto, tf.string), features)
    except (tf.errors.InvalidArgumentError, UnicodeDecodeError) as error:
        message = getattr(error, "message", "") or "wrong type or length"
        return f"cannot parse the tf.train.Example ({message.splitlines()[0][:200]})"
    return None


class SqlClientData(ClientData):
    """Clients of one split (or all rows when `split_name` is None) of a TFF-format SQLite file.

    Args:
        database_filepath: the `.sqlite` file (tables `examples` and `client_metadata`).
        split_name: the split (`"train"`, `"test"`, ...), or None for all rows.
        features: feature name -> `tf.io.FixedLenFeature`; an integer feature may be declared
            int32 (tf.train.Example stores int64; the parsed values are cast, so a client's
            dataset needs no map). None: every example is returned serialized.

    Raises:
        FileNotFoundError: if the file does not exist.
        MalformedDatasetError: if it is not a TFF-format database or the split has no clients.
    """

    def __init__(self, database_filepath: str, split_name: Optional[str] = None, features: Optional[Mapping[str, Any]] = None):
        self._path = os.fspath(database_filepath)
        self._split = split_name
        self._features = dict(features) if features is not None else None
        self._connection = _connect(self._path)
        self._lock = threading.Lock()
        where, parameters = ("WHERE split_name = ?", (split_name,)) if split_name is not None else ("", ())
        try:
            rows = self._connection.execute(
                f"SELECT client_id, SUM(num_examples) FROM client_metadata {where} GROUP BY client_id ORDER BY client_id", parameters
            ).fetchall()
        except sqlite3.DatabaseError as error:
            raise MalformedDatasetError(f"{self._path}: cannot read client_metadata ({error})") from None
        if not rows:
            splits = [r[0] for r in self._connection.execute("SELECT DISTINCT split_name FROM client_metadata")]
            raise MalformedDatasetError(f"{self._path}: no clients for split {split_name!r} (splits present: {splits})")
        self._ids = [str(client_id) for client_id, _ in rows]
        self._num_examples = {str(client_id): int(count) for client_id, count in rows}
        if not _has_client_index(self._connection):
            logging.warning("%s: no index on examples(client_id); each client's read scans the whole table", self._path)

    @property
    def client_ids(self) -> list:
        return self._ids

    @property
    def database_filepath(self) -> str:
        return self._path

    def num_examples(self, client_id: str) -> int:
        """The client's example count, from `client_metadata` (no example is read).

        Args:
            client_id: one of `client_ids`.

        Returns:
            The number of examples.

        Raises:
            KeyError: if `client_id` is unknown.
        """
        self._check_client_id(client_id)
        return self._num_examples[client_id]

    @property
    def element_type_structure(self) -> Any:
        if self._features is None:
            return tf.TensorSpec([], tf.string)
        return _element_spec(self._features)

    def _query(self) -> str:
        split = " AND split_name = ?" if self._split is not None else ""
        return f"SELECT serialized_example_proto FROM examples WHERE client_id = ?{split} ORDER BY rowid"

    def _read_protos(self, client_id: str) -> list:
        parameters = (client_id, self._split) if self._split is not None else (client_id,)
        with self._lock:
            try:
                return [row[0] for row in self._connection.execute(self._query(), parameters)]
            except sqlite3.DatabaseError as error:
                raise MalformedDatasetError(f"{self._path}: reading client {client_id!r} failed ({error})") from None

    def _dataset_for_known_client(self, client_id: str) -> tf.data.Dataset:
        protos = self._read_protos(client_id)
        serialized = np.array([bytes(p) for p in protos], dtype=object) if protos else np.zeros([0], dtype=object)
        if self._features is None:
            return tf.data.Dataset.from_tensor_slices(tf.constant(serialized, tf.string) if protos else tf.zeros([0], tf.string))
        return tf.data.Dataset.from_tensor_slices(self._parse_all(client_id, serialized))

    def _parse_all(self, client_id: str, serialized: np.ndarray) -> Any:
        spec = _element_spec(self._features)
        if len(serialized) == 0:
            return collections.OrderedDict((n, tf.zeros([0] + list(s.shape), s.dtype)) for n, s in spec.items())
        try:
            parsed = tf.io.parse_example(tf.constant(serialized, tf.string), _wire_features(self._features))
        except (tf.errors.InvalidArgumentError, UnicodeDecodeError):
            # TF's message may quote the raw bytes (and even fail to decode them): find the row.
            for row, proto in enumerate(serialized):
                reason = _parse_problem(proto, _wire_features(self._features))
                if reason:
                    raise MalformedDatasetError(
                        f"{self._path}: split {self._split!r}, client {client_id!r}, example {row}: {reason}"
                    ) from None
            raise
        return _cast(parsed, spec)

    @property
    def serializable_dataset_fn(self) -> DatasetFn:
        path, split, features = self._path, self._split, self._features

        def dataset_fn(client_id: tf.Tensor) -> tf.data.Dataset:
            quoted = tf.strings.regex_replace(client_id, "'", "''")
            condition = tf.strings.join(["client_id = '", quoted, "'"])
            if split is not None:
                condition = tf.strings.join([condition, " AND split_name = '", split.replace("'", "''"), "'"])
            query = tf.strings.join(["SELECT serialized_example_proto FROM examples WHERE ", condition, " ORDER BY rowid"])
            dataset = tf.data.experimental.SqlDataset("sqlite", path, query, (tf.string,)).map(lambda proto: proto)
            if features is None:
                return dataset
            spec = _element_spec(features)

            def parse(proto):
                return _cast(tf.io.parse_single_example(proto, _wire_features(features)), spec)

            return dataset.map(parse)

        return dataset_fn
