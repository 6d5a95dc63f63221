"""Where round metrics go: a CSV file and TensorBoard. Each manager has `release(metrics, round_num)`
and `clear_metrics(round_num)` (drops rounds >= round_num, for a resumed run).

Nested metrics are flattened to `a/b/c` names; only numeric scalars are recorded.

Example::

    managers = [CSVMetricsManager("/tmp/run1/metrics.csv"), TensorBoardMetricsManager("/tmp/run1/tb")]
"""

from __future__ import annotations

import csv
import os
from typing import Any, Mapping

import tensorflow as tf
from tensorflow.core.framework import summary_pb2
from tensorflow.core.util import event_pb2

from fedsim.core.structure import flatten_metrics

__all__ = ["CSVMetricsManager", "TensorBoardMetricsManager", "flatten_metrics"]

ROUND_KEY = "round_num"


class CSVMetricsManager:
    """One row per round; the header grows when a new metric appears (the file is rewritten).

    Args:
        csv_filepath: the CSV file; rows already in it are kept (a resumed run continues it).

    Raises:
        ValueError: if the file exists and is not a metrics CSV (no round column).

    Example:
        >>> run_training_process(process, select, 10, metrics_managers=[CSVMetricsManager("metrics.csv")])
    """

    def __init__(self, csv_filepath: str):
        self.path = os.fspath(csv_filepath)
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self._rows, self._fields = self._read()

    def _read(self):
        if not os.path.exists(self.path):
            return [], [ROUND_KEY]
        with open(self.path, newline="") as stream:
            reader = csv.DictReader(stream)
            fields = list(reader.fieldnames or [ROUND_KEY])
            if ROUND_KEY not in fields:
                raise ValueError(f"{self.path}: not a metrics CSV (no {ROUND_KEY!r} column)")
            return list(reader), fields

    def _rewrite(self) -> None:
        partial = self.path + ".partial"
        with open(partial, "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=self._fields, restval="")
            writer.writeheader()
            writer.writerows(self._rows)
        os.replace(partial, self.path)

    def release(self, metrics: Mapping[str, Any], round_num: int) -> None:
        """Appends one round's row (a new metric name adds a column and rewrites the file).

        Args:
            metrics: the round's metrics (nested; flattened to `a/b` columns).
            round_num: the round.
        """
        row = {ROUND_KEY: round_num, **flatten_metrics(metrics)}
        new_fields = [name for name in row if name not in self._fields]
        self._rows.append({k: str(v) for k, v in row.items()})
        if new_fields or not os.path.exists(self.path):
            self._fields += new_fields
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as stream:
                csv.DictWriter(stream, fieldnames=self._fields, restval="").writerow(self._rows[-1])

    def clear_metrics(self, round_num: int) -> None:
        """Drops the rows of rounds >= `round_num` (a resumed run rewrites them).

        Args:
            round_num: the first round to drop.
        """
        self._rows = [row for row in self._rows if int(row[ROUND_KEY]) < round_num]
        self._rewrite()

    def get_metrics(self) -> list:
        """The rows as dicts of strings (as read back from the file)."""
        return [dict(row) for row in self._read()[0]]


# What TensorBoard's scalar plugin writes, so its dashboard shows these; TensorFlow's own
# `tf.summary.write` needs no `tensorboard` package (which TF 2.21 no longer installs).
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"), data_class=summary_pb2.DATA_CLASS_SCALAR
).SerializeToString()


class TensorBoardMetricsManager:
    """Scalars through `tf.summary`, one step per round, readable by TensorBoard's scalar dashboard.

    Args:
        summary_dir: the directory of the event files.

    Example:
        >>> run_training_process(process, select, 10, metrics_managers=[TensorBoardMetricsManager("logs")])
    """

    def __init__(self, summary_dir: str):
        self.summary_dir = os.fspath(summary_dir)
        self._writer = tf.summary.create_file_writer(self.summary_dir)

    def release(self, metrics: Mapping[str, Any], round_num: int) -> None:
        """Writes one round's numeric metrics as scalars at step `round_num`.

        Args:
            metrics: the round's metrics (nested; flattened to `a/b` tags).
            round_num: the round (the step).
        """
        with self._writer.as_default():
            for name, value in flatten_metrics(metrics).items():
                tf.summary.write(name, tf.constant(value, tf.float32), step=round_num, metadata=_SCALAR_METADATA)
        self._writer.flush()

    def clear_metrics(self, round_num: int) -> None:
        """Drops the events of rounds >= `round_num`, so TensorBoard shows each round once.

        A run resumed from an earlier saved state rewrites them. Event files are rewritten whole.

        Args:
            round_num: the first round to drop.
        """
        self._writer.close()
        for name in sorted(os.listdir(self.summary_dir)):
            if "tfevents" not in name:
                continue
            path = os.path.join(self.summary_dir, name)
            kept = []
            for record in tf.data.TFRecordDataset(path):
                event = event_pb2.Event.FromString(record.numpy())
                if not event.HasField("summary") or event.step < round_num:
                    kept.append(record.numpy())
            partial = path + ".partial"
            with tf.io.TFRecordWriter(partial) as writer:
                for record in kept:
                    writer.write(record)
            os.replace(partial, path)
        self._writer = tf.summary.create_file_writer(self.summary_dir)
