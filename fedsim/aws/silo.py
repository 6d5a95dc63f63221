"""The silo agent: runs each round's work phase on local data; raw data never leaves the silo.

It polls its own queue; for each `global_model_ready` message it downloads the work
computation (cached by content hash) and the round's broadcast (checksum verified), runs work on
its local dataset, uploads the output with its SHA-256 under its own prefix, records the result
with a conditional write (a duplicate is not written twice), and only then deletes the message.
A silo that dies mid-round leaves the message in the queue, to be redelivered after the
visibility timeout.

    python -m fedsim.aws.silo --stack-config stack.json --silo-id hospital-a --data /data/a.npz

Example (Python)::

    agent = SiloAgent(config, "hospital-a", load_silo_data("/data/a.npz"))
    agent.run(stop_after_rounds=3)
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sqlite3
import threading
import time
from typing import Any, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from fedsim.aws import protocol
from fedsim.aws.config import StackConfig
from fedsim.aws.store import Store

__all__ = ["SiloAgent", "load_silo_data", "main"]


def load_silo_data(path: str, split: Optional[str] = None, client_id: Optional[str] = None) -> tf.data.Dataset:
    """The silo's examples as a dataset: an `.npz` of arrays (one row per example), or a TFF-format
    `.sqlite` file (features inferred from the first example, flattened)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"silo data file {path!r} not found")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as archive:
            arrays = collections.OrderedDict((name, archive[name]) for name in archive.files)
        return tf.data.Dataset.from_tensor_slices(arrays)
    if path.endswith(".sqlite"):
        from fedsim.simulation.datasets import SqlClientData

        data = SqlClientData(path, split, _infer_features(path))
        if client_id is not None:
            return data.create_tf_dataset_for_client(client_id)
        return data.create_tf_dataset_from_all_clients()
    raise ValueError(f"silo data {path!r}: expected an .npz or a TFF-format .sqlite file")


def _infer_features(path: str) -> dict:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = connection.execute("SELECT serialized_example_proto FROM examples LIMIT 1").fetchone()
    finally:
        connection.close()
    if row is None:
        raise ValueError(f"{path}: no examples")
    example = tf.train.Example.FromString(row[0])
    features = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        values = getattr(feature, kind).value
        dtype = {"float_list": tf.float32, "int64_list": tf.int64, "bytes_list": tf.string}[kind]
        features[name] = tf.io.FixedLenFeature([] if len(values) == 1 else [len(values)], dtype)
    return features


class SiloAgent:
    """One silo: its id, its queue (from the stack config) and its local dataset."""

    def __init__(self, config: StackConfig, silo_id: str, dataset: tf.data.Dataset, poll_seconds: int = 1,
                 fail_before_upload: bool = False):
        if silo_id not in config.silo_queues:
            raise ValueError(f"silo {silo_id!r} has no queue in this stack (silos: {sorted(config.silo_queues)})")
        self.config = config
        self.silo_id = silo_id
        self.dataset = dataset
        self.poll_seconds = poll_seconds
        self.queue_url = config.silo_queues[silo_id]
        self.store = Store(config)
        self.sqs = config.client("sqs")
        self.rounds_done = 0
        self.outcomes: list = []
        self.last_work_seconds = 0.0
        self.fail_before_upload = fail_before_upload  # for fault tests: die after receiving
        self._stop = threading.Event()
        self._preprocessed: dict = {}

    def stop(self) -> None:
        self._stop.set()

    def run(self, stop_after_rounds: Optional[int] = None, idle_timeout: Optional[float] = None) -> int:
        """Polls until stopped, `stop_after_rounds` rounds are done, or nothing came for `idle_timeout` s."""
        last_message = time.monotonic()
        while not self._stop.is_set():
            if stop_after_rounds is not None and self.rounds_done >= stop_after_rounds:
                break
            if idle_timeout is not None and time.monotonic() - last_message > idle_timeout:
                break
            messages = self.sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=self.poll_seconds
            ).get("Messages", [])
            for message in messages:
                last_message = time.monotonic()
                self.outcomes.append(self.process(message))
        return self.rounds_done

    def process(self, message: dict) -> str:
        body = json.loads(message["Body"])
        request = json.loads(body["Message"]) if "Message" in body else body  # SNS envelope on AWS
        if self.silo_id not in request.get("silos", []):
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
            self.rounds_done += 1
            return "not for this silo"
        if self.fail_before_upload:
            raise RuntimeError(f"silo {self.silo_id} failed mid-round (simulated)")
        run_id, round_num = request["run_id"], int(request["round"])
        if self.store.exists(f"{protocol.round_prefix(run_id, round_num)}/result.npz"):
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
            logging.info("silo %s, run %s round %d: already closed, skipped", self.silo_id, run_id, round_num)
            self.rounds_done += 1
            return "round already closed"
        key = protocol.silo_result_key(self.silo_id, run_id, round_num)
        received_at = time.time()
        if self.store.exists(key):  # a redelivered message after an upload: reuse it, never rewrite it
            output_bytes = self.store.get(key)[0]
            digest = protocol.sha256(output_bytes)
        else:
            output_bytes = self.work(request)
            digest = self.store.put_new(key, output_bytes)
        item = dict(protocol.silo_item_key(self.silo_id, run_id, round_num))
        item.update({
            "round_key": protocol.round_key(run_id, round_num),
            "key": key,
            "sha256": digest,
            "size": len(output_bytes),
            "task_token": request["task_token"],
            "received_at": received_at,
            "work_seconds": self.last_work_seconds,
            "written_at": time.time(),
        })
        outcome = "reported" if self.store.put_item_if_absent(item) else "duplicate"
        self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        self.rounds_done += 1
        logging.info("silo %s, run %s round %d: %s", self.silo_id, run_id, round_num, outcome)
        return outcome

    def work(self, request: dict) -> bytes:
        """Runs the round's work phase on the local data; returns the encoded output."""
        manifest = self.store.get_json(request["manifest_key"])
        work = self.store.get_computation(manifest["phases"]["work"])
        prepare = self.store.get_computation(manifest["phases"]["prepare"])
        prefix = protocol.round_prefix(request["run_id"], int(request["round"]))
        broadcast = protocol.decode_value(
            self.store.get_checked(f"{prefix}/broadcast.npz"), prepare.type_signature.result[0], "the round's broadcast"
        )
        dataset = self._input(manifest)
        started = time.monotonic()
        output = work.call_value((dataset, broadcast))
        self.last_work_seconds = time.monotonic() - started
        return protocol.encode_value(output, work.type_signature.result)

    def _input(self, manifest: dict) -> Any:
        reference = manifest.get("preprocess")
        if reference is None:
            return self.dataset
        preprocess = self.store.get_computation(reference)
        return preprocess.call_value(self.dataset)


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedsim.aws.silo", description=__doc__.splitlines()[0])
    parser.add_argument("--stack-config", required=True, help="JSON written by LocalStack or StackConfig.to_json")
    parser.add_argument("--silo-id", required=True)
    parser.add_argument("--data", required=True, help=".npz of arrays or a TFF-format .sqlite file")
    parser.add_argument("--split", default=None)
    parser.add_argument("--client-id", default=None)
    parser.add_argument("--rounds", type=int, default=None, help="stop after this many rounds")
    parser.add_argument("--idle-timeout", type=float, default=None, help="stop after this many idle seconds")
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.INFO)
    with open(args.stack_config) as stream:
        config = StackConfig.from_json(stream.read())
    agent = SiloAgent(config, args.silo_id, load_silo_data(args.data, args.split, args.client_id))
    agent.run(stop_after_rounds=args.rounds, idle_timeout=args.idle_timeout)


if __name__ == "__main__":
    main()
