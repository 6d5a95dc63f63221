"""The silo agent: runs each round's work phase on local data; raw data never leaves the silo.

It polls its own queue; for each `global_model_ready` message it downloads the work
computation (cached by content hash) and the round's broadcast (checksum verified), runs work on
its local dataset, uploads the output with its SHA-256 under its own prefix, records the result
with a conditional write (a duplicate is not written twice), and only then deletes the message.
A silo that dies mid-round leaves the message in the queue, to be redelivered after the
visibility timeout.

What a silo accepts: a computation whose bytes pass `deserialize_computation` (data only, no
imports; every graph op in the silo's op allowlist) and, when the silo pins computations
(`--accept`), whose SHA-256 is pinned. A refused computation is never run; the refusal, with
its reason, is the silo's result for the round, so the caller's round fails at once.

    python -m fedsim.aws.silo --stack-config stack.json --silo-id hospital-a --data /data/a.npz \
        --accept 3f1c...e9,77ab...02      # or --accept-file pinned.txt

Example (Python)::

    agent = SiloAgent(config, "hospital-a", load_silo_data("/data/a.npz"))
    agent.run(stop_after_rounds=3)
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
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
from fedsim.aws.config import StackConfig, StackUnreachableError
from fedsim.aws.store import AccessDeniedError, Store
from fedsim.core import op_allowlist, phase_runner, structure
from fedsim.core import types as ft
from fedsim.core.errors import SerializationError

__all__ = ["DEFAULT_DATASET", "SiloAgent", "ComputationRefusedError", "LocalDataError", "load_silo_data", "load_silo_datasets",
           "read_identities", "read_pins", "main"]

DEFAULT_DATASET = "train"  # the name of a silo's only dataset, and what a run trains on unless its manifest says

_HASH_LENGTH = 64
ASYNC_POLL_SECONDS = 0.05  # first wait for a newer model version in an asynchronous run; grows to:
ASYNC_MAX_POLL_SECONDS = 1.0
ASYNC_VISIBILITY_SECONDS = 120  # how long the run's message stays invisible, renewed every third of it


class ComputationRefusedError(RuntimeError):
    """The silo will not run a round's computation; the message says which and why."""


class LocalDataError(RuntimeError):
    """The silo's own data does not fit the round's computations (or they fail on it); the
    message names the silo and the difference. Reported as the silo's result, like a refusal."""


def read_pins(values: Any) -> frozenset:
    """SHA-256 hashes from strings such as ``"abc...,def..."`` or the lines of a pins file.

    Blank lines and ``#`` comments are skipped; anything that is not 64 hex digits is an error.
    """
    if isinstance(values, str):
        values = [values]
    pins = set()
    for value in values:
        for line in value.splitlines():
            for part in line.split("#", 1)[0].replace(",", " ").split():
                digest = part.strip().lower()
                if len(digest) != _HASH_LENGTH or any(c not in "0123456789abcdef" for c in digest):
                    raise ValueError(f"{part!r} is not a computation hash (64 hex digits, as printed by fedsim.aws.review)")
                pins.add(digest)
    return frozenset(pins)


def load_silo_data(path: str, split: Optional[str] = None, client_id: Optional[str] = None) -> tf.data.Dataset:
    """The silo's examples as a dataset.

    Args:
      path: an `.npz` of arrays (one row per example), or a TFF-format `.sqlite` file (features
        inferred from the first example, flattened).
      split: the `.sqlite` file's split (e.g. "train").
      client_id: the `.sqlite` file's client whose examples these are (default: all).

    Returns:
      A `tf.data.Dataset` of the examples, unbatched.

    Raises:
      FileNotFoundError: there is no such file.
      ValueError: the file's format or contents cannot be read.
    """
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


def _sqlite_split_names(path: str) -> list:
    """The split names of a TFF-format SQLite file (e.g. `train`, `test`)."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return sorted(row[0] for row in connection.execute("SELECT DISTINCT split_name FROM client_metadata") if row[0])
    finally:
        connection.close()


def load_silo_datasets(specs: list, split: Optional[str] = None, client_id: Optional[str] = None) -> dict:
    """Named datasets from `--data` values: `NAME=PATH`, or `PATH` (named `train`; a TFF-format
    `.sqlite` without `--split` gives one dataset per split name in the file)."""
    datasets: dict = {}
    for spec in specs:
        name, separator, path = spec.partition("=")
        if not separator:
            name, path = None, spec
        elif not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"{spec!r}: a dataset name is letters, digits, '-' and '_'")
        if name is None and path.endswith(".sqlite") and split is None and os.path.isfile(path):
            loaded = {s: load_silo_data(path, s, client_id) for s in _sqlite_split_names(path)}
        else:
            loaded = {name or DEFAULT_DATASET: load_silo_data(path, split, client_id)}
        for loaded_name, dataset in loaded.items():
            if loaded_name in datasets:
                raise ValueError(f"dataset {loaded_name!r} is given twice")
            datasets[loaded_name] = dataset
    return datasets


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

    def __init__(self, config: StackConfig, silo_id: str, dataset: Any, poll_seconds: int = 1,
                 accept: Optional[Any] = None,
                 allowed_ops: op_allowlist.OpAllowlist = op_allowlist.DEFAULT_OP_ALLOWLIST,
                 identity: Any = None, pinned_identities: Optional[dict] = None):
        """Connects the silo to its queue in the stack.

        Args:
            config: the stack as this silo sees it (its own role's credentials).
            silo_id: the silo's id (it must have a queue in the stack).
            dataset: a `tf.data.Dataset` (named `train`), or `{name: dataset}` (e.g. `train` and
                `test`); a run's manifest says which step runs on which.
            poll_seconds: the queue's long-poll wait.
            accept: the hashes of the only computations this silo runs (None: any that passes
                `allowed_ops`).
            allowed_ops: the ops a computation's graphs may use here.
            identity: the silo's long-term Ed25519 identity key
                (`fedsim.core.secagg.crypto.identity_key()`), which signs its keys in secure steps.
            pinned_identities: silo id -> the raw public identity key pinned for it at onboarding.
                Without `identity` and these the silo refuses secure steps.

        Raises:
            ValueError: if the silo has no queue in the stack or no dataset.
            StackUnreachableError: if the stack's endpoint does not answer.
        """
        if silo_id not in config.silo_queues:
            raise ValueError(f"silo {silo_id!r} has no queue in this stack (silos: {sorted(config.silo_queues)})")
        config.check_reachable(config.silo_queues[silo_id])
        self.config = config
        self.silo_id = silo_id
        self.datasets = dict(dataset) if isinstance(dataset, dict) else {DEFAULT_DATASET: dataset}
        if not self.datasets:
            raise ValueError(f"silo {silo_id!r} has no dataset")
        self.poll_seconds = poll_seconds
        self.queue_url = config.silo_queues[silo_id]
        self.accept = None if accept is None else read_pins(accept)
        self.store = Store(config, allowed_ops=allowed_ops)
        self.identity = identity
        self.pinned_identities = dict(pinned_identities or {})
        self.sqs = config.client("sqs")
        self.rounds_done = 0
        self.outcomes: list = []
        self.last_work_seconds = 0.0
        self._stop = threading.Event()
        self._preprocessed: dict = {}
        self._visible_again_soon = 0.0  # when the asynchronous run's message needs its visibility extended

    def stop(self) -> None:
        """Asks `run` to return after the message it is on (safe from another thread)."""
        self._stop.set()

    def run(self, stop_after_rounds: Optional[int] = None, idle_timeout: Optional[float] = None) -> int:
        """Polls the silo's queue and runs each round it is asked to, until told to stop.

        No AWS error ends it: a failed poll is retried, and a round message that could not be
        processed is left for redelivery (an upload already made is reused, never rewritten).

        Args:
          stop_after_rounds: return once this many round messages were handled.
          idle_timeout: return once no message came for this many seconds.

        Returns:
          The number of round messages handled.
        """
        last_message = time.monotonic()
        while not self._stop.is_set():
            if stop_after_rounds is not None and self.rounds_done >= stop_after_rounds:
                break
            if idle_timeout is not None and time.monotonic() - last_message > idle_timeout:
                break
            try:
                messages = self.sqs.receive_message(
                    QueueUrl=self.queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=self.poll_seconds
                ).get("Messages", [])
            except Exception as error:  # noqa: BLE001 - throttled or unreachable for a moment: poll again
                logging.warning("silo %s: polling the queue failed (%s); polling again", self.silo_id, error)
                self._stop.wait(max(1, self.poll_seconds))
                continue
            for message in messages:
                last_message = time.monotonic()
                try:
                    self.outcomes.append(self.process(message))
                except Exception as error:  # noqa: BLE001 - AWS's bad minute must not end the agent
                    # The message is not deleted: it comes back after its visibility timeout and
                    # the round is tried again (an upload already made is reused, never rewritten).
                    logging.warning("silo %s: a round message could not be processed (%s: %s); it will be retried",
                                    self.silo_id, type(error).__name__, str(error)[:500])
                    self.outcomes.append("retry later")
        return self.rounds_done

    def process(self, message: dict) -> str:
        """Handles one round message: vets the computation, trains, uploads, records.

        A message for another silo, a closed round or a malformed step is deleted; a refusal is
        recorded as the silo's result with its reason.

        Args:
            message: an SQS message (its body the round request, possibly in an SNS envelope).

        Returns:
            The outcome: "reported", "refused", "duplicate" (a result was already recorded),
            "not for this silo", "malformed" or "round already closed".

        Raises:
            botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError: an AWS error;
                the run loop logs it and leaves the message for redelivery.
        """
        body = json.loads(message["Body"])
        request = json.loads(body["Message"]) if "Message" in body else body  # SNS envelope on AWS
        if self.silo_id not in request.get("silos", []):
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
            self.rounds_done += 1
            return "not for this silo"
        run_id, step = str(request["run_id"]), str(request["round"])
        try:
            protocol.parse_step(step)
        except ValueError as error:
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
            logging.warning("silo %s: a message for run %s was dropped: %s", self.silo_id, run_id[:40], error)
            return "malformed"
        if self._closed(run_id, step):
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
            logging.info("silo %s, run %s round %s: already closed, skipped", self.silo_id, run_id, step)
            self.rounds_done += 1
            return "round already closed"
        key = protocol.silo_result_key(self.silo_id, run_id, step)
        try:
            if self._manifest(request).get("mode") == protocol.ASYNCHRONOUS:
                return self._asynchronous_run(message, request)
            if not self._own_object_exists(key):
                if self._in_protocol(run_id, step):  # restarted mid-protocol: its session keys are gone
                    self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
                    self.rounds_done += 1
                    return "dropped (restarted during the secure protocol)"
                if self._step_section(request).get("secure_sums"):
                    return self._secure_step(message, request, self._result_item(run_id, step), key)
        except (ComputationRefusedError, LocalDataError) as refusal:
            outcome = self._record_refusal(run_id, step, refusal)
        else:
            outcome = self._report_update(request, run_id, step)
        self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        self.rounds_done += 1
        logging.info("silo %s, run %s round %s: %s", self.silo_id, run_id, step, outcome)
        return outcome

    def _result_item(self, run_id: str, step: str) -> dict:
        """The silo's record of a step's result, before its result fields are set."""
        item = dict(protocol.silo_item_key(self.silo_id, run_id, step))
        item.update({"round_key": protocol.round_key(run_id, step), "received_at": time.time()})
        return item

    def _record_refusal(self, run_id: str, step: str, refusal: Exception) -> str:
        """Records that the silo would not (or could not) run the step, with the reason."""
        logging.warning("silo %s, run %s round %s: %s", self.silo_id, run_id, step, refusal)
        item = self._result_item(run_id, step)
        item.update({"refused": str(refusal)[:protocol.MAX_REASON_CHARS], "written_at": time.time()})
        return "refused" if self.store.put_item_if_absent(item) else "duplicate"

    def _report_update(self, request: dict, run_id: str, step: str) -> str:
        """Runs the step's work (or reuses an upload already made: never rewritten), uploads it
        under the silo's own prefix and records it once; "reported", "refused" or "duplicate"."""
        key = protocol.silo_result_key(self.silo_id, run_id, step)
        item = self._result_item(run_id, step)
        try:
            if self._own_object_exists(key):  # a redelivered message after an upload: reuse it
                output_bytes = self.store.get(key)[0]
                digest = protocol.sha256(output_bytes)
            else:
                output_bytes = self.work(request)
                digest = self.store.put_new(key, output_bytes)
        except (ComputationRefusedError, LocalDataError) as refusal:
            return self._record_refusal(run_id, step, refusal)
        item.update({"key": key, "sha256": digest, "size": len(output_bytes),
                     "work_seconds": self.last_work_seconds, "written_at": time.time()})
        return "reported" if self.store.put_item_if_absent(item) else "duplicate"

    def _asynchronous_run(self, message: dict, request: dict) -> str:
        """Takes part in an asynchronous run until it ends: trains on the newest model version,
        uploads, and starts again as soon as a newer version is published (at most one update per
        version). Keeps the run's message invisible while it works; a stopped agent leaves the
        message, and the one that takes it again goes on from the newest version (an update
        already uploaded is reused)."""
        run_id = str(request["run_id"])
        step, done_step, updates = protocol.parse_step(request["round"])[0], None, 0
        wait = ASYNC_POLL_SECONDS
        while not self._stop.is_set():
            self._keep_invisible(message)
            try:
                newest = self._newest_step(run_id, step)
            except Exception as error:  # noqa: BLE001 - AWS's bad minute: look again, never a verdict
                logging.warning("silo %s, asynchronous run %s: finding the newest version failed (%s); retrying",
                                self.silo_id, run_id, error)
                self._stop.wait(ASYNC_MAX_POLL_SECONDS)
                continue
            if newest is None:  # the run is over
                break
            if newest == done_step:  # no newer version yet
                self._stop.wait(wait)
                wait = min(wait * 1.5, ASYNC_MAX_POLL_SECONDS)
                continue
            wait, step = ASYNC_POLL_SECONDS, newest
            label = protocol.step_label(step)
            try:
                outcome = self._report_update(dict(request, round=label), run_id, label)
            except Exception as error:  # noqa: BLE001 - retried on the newest version (an upload made is reused)
                logging.warning("silo %s, asynchronous run %s: the update from version %d failed (%s: %s); retrying",
                                self.silo_id, run_id, step - 1, type(error).__name__, str(error)[:300])
                self._stop.wait(ASYNC_MAX_POLL_SECONDS)
                continue
            logging.info("silo %s, asynchronous run %s, update from version %d: %s", self.silo_id, run_id, step - 1, outcome)
            if outcome == "refused":  # the same computation on the same data would be refused again
                break
            done_step, updates = step, updates + 1
        else:
            return "stopped during an asynchronous run"
        self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        self.rounds_done += 1
        return f"asynchronous run over ({updates} updates)"

    def _newest_step(self, run_id: str, step: int) -> Optional[int]:
        """The newest open step of an asynchronous run from `step` on (the newest model version
        plus one), or None when the server marked the run's end."""
        while self.store.exists(f"{protocol.round_prefix(run_id, protocol.step_label(step + 1))}/broadcast.npz"):
            step += 1
        if self._closed(run_id, protocol.step_label(step)) or self._closed(run_id, protocol.step_label(step + 1)):
            return None
        return step

    def _keep_invisible(self, message: dict) -> None:
        """Extends the run message's visibility while the agent works on the run (best effort:
        a message that reappears is taken again after the run and finds it over)."""
        now = time.monotonic()
        if now < self._visible_again_soon:
            return
        try:
            self.sqs.change_message_visibility(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"],
                                               VisibilityTimeout=ASYNC_VISIBILITY_SECONDS)
            self._visible_again_soon = now + ASYNC_VISIBILITY_SECONDS / 3
        except Exception as error:  # noqa: BLE001 - AWS's bad minute: tried again at the next update
            logging.warning("silo %s: extending the run message's visibility failed (%s)", self.silo_id, error)

    def _in_protocol(self, run_id: str, step: str) -> bool:
        """Whether this silo already began the step's secure protocol (a restarted agent, whose
        session keys are gone, cannot go on: it drops out and the others recover without it)."""
        return self._own_object_exists(_protocol_marker_key(self.silo_id, run_id, step))

    def _own_object_exists(self, key: str) -> bool:
        """Whether an object under this silo's own prefix exists. The silo may read there but not
        list the bucket, and S3 answers 403, not 404, for a missing object to such a reader: with
        read access granted, a 403 means absent."""
        try:
            return self.store.exists(key)
        except AccessDeniedError:
            return False

    def _closed(self, run_id: str, step: str) -> bool:
        """Whether the server marked the step closed (a late silo skips it). A marker it may not
        read (an older stack) counts as not closed: the silo works, the server ignores it."""
        try:
            return self.store.exists(protocol.closed_key(run_id, step))
        except AccessDeniedError:
            return False

    def work(self, request: dict) -> bytes:
        """Runs the round's work phase on the silo's data.

        Args:
          request: the round message (`run_id`, `round`, `manifest_key`, ...).

        Returns:
          The work's output, encoded (`protocol.encode_value`), to upload.

        Raises:
          ComputationRefusedError: as `work_output`.
        """
        output, output_type = self.work_output(request)
        return protocol.encode_value(output, output_type)

    def work_output(self, request: dict) -> tuple:
        """Runs the round's work phase on the silo's data.

        Args:
          request: the round message (`run_id`, `round`, `manifest_key`, ...).

        Returns:
          `(output, output_type)`: the work's output and its type.

        Raises:
          ComputationRefusedError: the manifest or a computation is not one this silo accepts
            (unpinned, oversize, wrong checksum, ops outside the allowlist); the reason is sent
            as the silo's result.
        """
        manifest = self._manifest(request)
        section = self._step_section(request)
        work = self.accepted_computation(section["phases"].get("work"), "work", section.get("secure_sums"))
        broadcast_type = self._manifest_type(section, "broadcast")
        input_type = self._manifest_type(section, "client_input")
        dataset = self._dataset(section.get("dataset"))
        if work.type_signature.parameter != ft.StructType([(None, input_type), (None, broadcast_type)]):
            raise ComputationRefusedError(
                f"the work computation takes {work.type_signature.parameter}, but the run's manifest says "
                f"<{input_type},{broadcast_type}>"
            )
        preprocess = None if manifest.get("preprocess") is None else self.accepted_computation(manifest["preprocess"], "preprocess")
        prefix = protocol.round_prefix(request["run_id"], str(request["round"]))
        broadcast = protocol.decode_value(self.store.get_checked(f"{prefix}/broadcast.npz"), broadcast_type, "the round's broadcast")
        started = time.monotonic()
        try:  # the silo's own data meets the round's computations: a failure here is reported, not retried
            if preprocess is not None:
                dataset = structure.check_and_normalize(dataset, preprocess.type_signature.parameter, f"silo {self.silo_id}'s data")
                dataset = preprocess.call_value(dataset)
            output = phase_runner.work(work, dataset, broadcast, f"silo {self.silo_id}'s data")
        except structure.TypeSignatureMismatchError as mismatch:
            raise LocalDataError(f"silo {self.silo_id}'s data does not fit the round's computation: {mismatch}") from None
        except tf.errors.OpError as error:
            raise LocalDataError(f"silo {self.silo_id} could not run the round on its data: {type(error).__name__}: "
                                 f"{error.message.splitlines()[0] if error.message else error}") from None
        self.last_work_seconds = time.monotonic() - started
        return output, work.type_signature.result

    def _manifest(self, request: dict) -> dict:
        try:
            manifest = self.store.get_json(request["manifest_key"])
        except protocol.InvalidValueError as error:
            raise ComputationRefusedError(f"the run's manifest cannot be used: {error}") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("phases"), dict):
            raise ComputationRefusedError(f"the run's manifest {request['manifest_key']!r} is malformed (no phases)")
        return manifest

    def _step_section(self, request: dict) -> dict:
        """The part of the run's manifest the step runs (training's, or the evaluation's)."""
        manifest = self._manifest(request)
        _, is_evaluation = protocol.parse_step(request["round"])
        section = manifest.get("evaluation") if is_evaluation else manifest
        if not isinstance(section, dict) or not isinstance(section.get("phases"), dict):
            raise ComputationRefusedError(f"the run's manifest {request['manifest_key']!r} has no evaluation phases")
        return section

    def _secure_step(self, message: dict, request: dict, item: dict, key: str) -> str:
        """Runs the work and takes part in a secure step's protocol (`secure_silo`); uploads only
        the masked input in place of the secure parts of the work's output.

        The work is accepted (pins, layout, identity) before any protocol message; the keys are
        then advertised and shared while the work runs (they are fresh for the round and do not
        depend on its output). A work that fails after that leaves the session: the silo is a
        dropout, recovered by the others' shares, and its refusal is its result.
        """
        from fedsim.aws import secure_silo

        section = self._step_section(request)
        work = self.accepted_computation(section["phases"].get("work"), "work", section.get("secure_sums"))
        layout = secure_layout(work.type_signature.result, section)
        run_id, step, silos = str(request["run_id"]), str(request["round"]), [str(s) for s in request["silos"]]
        if self.identity is None or not self.pinned_identities:
            raise ComputationRefusedError(f"silo {self.silo_id} has no identity key and pins: it cannot take part in "
                                          f"secure aggregation (give the agent identity= and pinned_identities=)")
        try:
            params = layout.step_params(section, run_id, step, silos)
        except ValueError as error:
            raise ComputationRefusedError(str(error)) from None
        upload_type = layout.upload_type(len(silos))

        self.store.put_new(_protocol_marker_key(self.silo_id, run_id, step), b"{}")
        session = secure_silo.SecureSiloRound(self.store, self.silo_id, run_id, step, params, self.identity, self.pinned_identities)
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"fedsim-secagg-{self.silo_id}") as pool:
            keys = pool.submit(session.exchange_keys)
            try:
                output, _ = self.work_output(request)
                try:
                    plain, vector = layout.split(output)
                except ValueError as error:
                    raise LocalDataError(f"silo {self.silo_id}'s work output does not fit its secure sum: {error}") from None
            except BaseException:
                session.leave()
                raise

        def upload(masked: bytes) -> None:
            value = tuple(plain) + (np.frombuffer(masked, params.wire_dtype).astype(upload_type[len(upload_type) - 1].dtype.as_numpy_dtype),)
            data = protocol.encode_value(value, upload_type)
            digest = self.store.put_new(key, data)
            item.update({"key": key, "sha256": digest, "size": len(data), "work_seconds": self.last_work_seconds,
                         "written_at": time.time()})
            self.store.put_item_if_absent(item)

        try:
            outcome = session.finish(keys.result(), vector, upload)
        except secure_silo.ProtocolError as error:
            logging.warning("silo %s, run %s step %s: left the secure protocol: %s", self.silo_id, run_id, step, error)
            outcome = "left the protocol"
        self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        self.rounds_done += 1
        return outcome

    def _dataset(self, name: Any) -> tf.data.Dataset:
        """The named dataset a step runs on (None: the silo's only one, or `train`)."""
        if name is None:
            name = next(iter(self.datasets)) if len(self.datasets) == 1 else DEFAULT_DATASET
        if not isinstance(name, str) or name not in self.datasets:
            raise LocalDataError(f"silo {self.silo_id} has no dataset named {str(name)[:64]!r} "
                                 f"(it has: {', '.join(sorted(self.datasets))})")
        return self.datasets[name]

    @staticmethod
    def _manifest_type(manifest: dict, name: str) -> ft.Type:
        try:
            return ft.type_from_json(manifest["types"][name], f"the manifest's {name} type")
        except (KeyError, TypeError, ValueError) as error:
            raise ComputationRefusedError(f"the run's manifest has no valid {name} type: {error}") from None

    def accepted_computation(self, reference: Any, role: str, secure_sums: Any = None) -> Any:
        """The computation `reference` names, if this silo accepts it.

        Checked before anything runs: the reference's form, the pin (if the silo pins; a work
        with secure sums is pinned with its secure layout, `protocol.work_pin`), the object's
        size and checksum, and deserialization (data only, ops in the allowlist).

        Args:
          reference: `{"key": ..., "sha256": ...}` from the run's manifest.
          role: what it is for ("work", "preprocess"), for the refusal's message.
          secure_sums: the step's secure layout from the manifest (the work's), or None.

        Returns:
          The deserialized computation.

        Raises:
          ComputationRefusedError: it is not accepted; the message says why.
        """
        if not (isinstance(reference, dict) and isinstance(reference.get("sha256"), str) and isinstance(reference.get("key"), str)):
            raise ComputationRefusedError(f"the {role} computation's reference is malformed: {str(reference)[:200]}")
        digest = reference["sha256"]
        if reference["key"] != protocol.computation_key(digest):
            raise ComputationRefusedError(f"the {role} computation's key {reference['key'][:200]!r} is not its content address")
        if self.accept is not None and protocol.work_pin(digest, secure_sums) not in self.accept:
            layout = (f" with the secure sums {json.dumps(secure_sums)}" if secure_sums
                      else " without secure sums (its output uploaded in the clear)" if role == "work" else "")
            raise ComputationRefusedError(
                f"silo {self.silo_id} refused the {role} computation {digest}: it is not pinned{layout} "
                f"(this silo accepts {len(self.accept)} computation(s); review it with python -m fedsim.aws.review "
                f"and add its pin to --accept)"
            )
        try:
            return self.store.get_computation(reference)
        except (SerializationError, protocol.InvalidValueError) as error:
            raise ComputationRefusedError(f"silo {self.silo_id} refused the {role} computation {digest}: {error}") from None


def read_identities(identity_path: str, pinned_path: str) -> tuple:
    """`(identity key, {silo: public identity key bytes})` from the silo's two files.

    Raises:
      ValueError: a file is not what it should be (the message names it).
      OSError: a file cannot be read.
    """
    import base64
    import binascii

    from fedsim.core.secagg import crypto

    with open(identity_path) as stream:
        try:
            identity = crypto.identity_from_bytes(base64.b64decode(stream.read().strip(), validate=True))
        except (binascii.Error, ValueError) as error:
            raise ValueError(f"--identity-key {identity_path}: not a base64 Ed25519 key ({error})") from None
    with open(pinned_path) as stream:
        try:
            document = json.load(stream)
            pinned = {str(silo): base64.b64decode(key, validate=True) for silo, key in document.items()}
        except (binascii.Error, ValueError, AttributeError, TypeError) as error:
            raise ValueError(f"--pinned-identities {pinned_path}: not a JSON object of base64 keys ({error})") from None
    if any(len(key) != 32 for key in pinned.values()):
        raise ValueError(f"--pinned-identities {pinned_path}: a key is not 32 bytes")
    return identity, pinned


def _protocol_marker_key(silo_id: str, run_id: str, step: str) -> str:
    """A silo's own marker that it began a step's secure protocol (under its own prefix)."""
    return protocol.silo_result_key(silo_id, run_id, step).rsplit("/", 1)[0] + "/secagg-started"


def secure_layout(output_type: ft.Type, section: dict) -> Any:
    """The step's secure layout (`secure_round.SecureLayout`), or None for a plain step.

    Raises:
      ComputationRefusedError: the manifest's secure sums do not fit the work's output.
    """
    bitwidths = section.get("secure_sums")
    if not bitwidths:
        return None
    from fedsim.aws import secure_round

    try:
        return secure_round.SecureLayout.of(output_type, bitwidths)
    except (ValueError, TypeError) as error:
        raise ComputationRefusedError(f"the run's manifest declares secure sums that do not fit the work: {error}") from None


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedsim.aws.silo", description=__doc__.splitlines()[0])
    parser.add_argument("--stack-config", required=True, help="JSON written by LocalStack or StackConfig.to_json")
    parser.add_argument("--silo-id", required=True)
    parser.add_argument("--data", required=True, action="append", metavar="[NAME=]PATH",
                        help=".npz of arrays or a TFF-format .sqlite file; repeat with names for several datasets "
                             "(train=a.npz --data test=b.npz); a .sqlite without --split gives one per split")
    parser.add_argument("--split", default=None)
    parser.add_argument("--client-id", default=None)
    parser.add_argument("--rounds", type=int, default=None, help="stop after this many rounds")
    parser.add_argument("--idle-timeout", type=float, default=None, help="stop after this many idle seconds")
    parser.add_argument("--accept", action="append", default=None, metavar="HASH[,HASH]",
                        help="run only the computations with these SHA-256 hashes (see python -m fedsim.aws.review)")
    parser.add_argument("--accept-file", action="append", default=None, metavar="PATH",
                        help="a file of pinned hashes, one per line (# comments allowed)")
    parser.add_argument("--identity-key", default=None, metavar="PATH",
                        help="this silo's Ed25519 identity key (32 raw bytes, base64) for secure aggregation")
    parser.add_argument("--pinned-identities", default=None, metavar="PATH",
                        help="JSON {silo id: base64 public identity key} of every silo, pinned at onboarding")
    args = parser.parse_args(argv)
    identity, pinned_identities = None, None
    if args.identity_key or args.pinned_identities:
        if not (args.identity_key and args.pinned_identities):
            parser.error("secure aggregation needs both --identity-key and --pinned-identities")
        try:
            identity, pinned_identities = read_identities(args.identity_key, args.pinned_identities)
        except (OSError, ValueError) as error:
            parser.error(str(error))
    pins = None
    if args.accept or args.accept_file:
        texts = list(args.accept or [])
        for path in args.accept_file or []:
            try:
                with open(path) as stream:
                    texts.append(stream.read())
            except OSError as error:
                parser.error(f"--accept-file {path}: {error.strerror}")
        try:
            pins = read_pins(texts)
        except ValueError as error:
            parser.error(str(error))
        if not pins:
            parser.error("--accept/--accept-file named no hash; a silo that accepts nothing would refuse every round")
    logging.set_verbosity(logging.INFO)
    try:
        with open(args.stack_config) as stream:
            config = StackConfig.from_json(stream.read())
    except (OSError, ValueError, TypeError) as error:
        parser.error(f"--stack-config {args.stack_config}: {error}")
    try:
        datasets = load_silo_datasets(args.data, args.split, args.client_id)
    except (OSError, ValueError, sqlite3.Error) as error:
        parser.error(f"--data {' '.join(args.data)}: {error}")
    try:
        agent = SiloAgent(config, args.silo_id, datasets, accept=pins, identity=identity, pinned_identities=pinned_identities)
    except ValueError as error:
        parser.error(str(error))
    except StackUnreachableError as error:
        parser.exit(1, f"{parser.prog}: {error}\n")
    agent.run(stop_after_rounds=args.rounds, idle_timeout=args.idle_timeout)


if __name__ == "__main__":
    main()
