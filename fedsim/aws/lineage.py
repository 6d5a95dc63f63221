"""A serverless run as an auditable record: per round, the model version, what ran, who contributed.

Everything here is read from what only the server writes: the run's manifest, its round items
(the handler's outcome: metrics, contributors, result key, S3 version id and sha256, stop
reason, timings) and the verdict items (why a silo's result was rejected, or that it was late).
A silo's own records are never read, so no silo can rewrite the lineage.

Example::

    lineage = fedsim.aws.read_lineage(stack.config, run_id)
    lineage.write_json("run.json"); lineage.write_csv("run.csv")
    weights = fedsim.aws.fetch_global_model(stack.config, run_id, round_num=3)
    fedsim.aws.export_model(stack.config, run_id, keras_model)   # model.keras + SavedModel in S3
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from typing import Any, Optional, Sequence

import attrs

from fedsim.aws import protocol
from fedsim.aws.store import Store
from fedsim.core import types as ft
from fedsim.core.canonical_form import CanonicalForm

__all__ = ["RunLineage", "export_model", "fetch_global_model", "metrics_history", "read_lineage", "read_step", "step_metrics",
           "step_outcome"]


@attrs.frozen
class RunLineage:
    """A run: its computations' hashes, each round's record, and why it stopped."""

    run_id: str
    computations: dict  # phase -> sha256 (training, evaluation, preprocess, bridge)
    rounds: tuple  # of dicts, one per round (see `read_lineage`)
    stop_reason: Optional[str]

    @property
    def history(self) -> list:
        """`[(round, {metric: value})]`, training and evaluation metrics as `run_training_process` names them."""
        return [(r["round"], dict(r["metrics"])) for r in self.rounds]

    def to_json(self) -> str:
        """The lineage as indented JSON: run, manifest, computations, every step's silos and results."""
        return json.dumps(attrs.asdict(self), indent=2, sort_keys=True)

    def to_csv(self) -> str:
        """One row per round: model version, contributors, rejected/late silos, timings, metrics
        (and in an asynchronous run, each version's updates and refusals)."""
        metric_names = sorted({name for r in self.rounds for name in r["metrics"]})
        asynchronous = any("updates" in r for r in self.rounds)
        columns = ["run_id", "round", "status", "model_key", "model_version_id", "model_sha256", "state_sha256",
                   "contributors", "rejected", "late", "missing", "aggregate_seconds", "update_seconds", "stop_reason"]
        columns += ["updates", "refused"] if asynchronous else []
        columns += metric_names
        stream = io.StringIO()
        writer = csv.DictWriter(stream, columns)
        writer.writeheader()
        for r in self.rounds:
            row = {"run_id": self.run_id, "round": r["round"], "status": r["status"], "model_key": r["model"]["key"],
                   "model_version_id": r["model"]["version_id"], "model_sha256": r["model"]["sha256"],
                   "state_sha256": r["model"]["state_sha256"], "contributors": " ".join(r["contributors"]),
                   "rejected": "; ".join(f"{s}: {why}" for s, why in sorted(r["rejected"].items())),
                   "late": " ".join(r["late"]), "missing": " ".join(r["missing"]),
                   "aggregate_seconds": r["timings"].get("aggregate_seconds"), "update_seconds": r["timings"].get("update_seconds"),
                   "stop_reason": r["stop_reason"] or ""}
            if asynchronous:  # silo@base version:weight of each update; silo@base version of each refused
                row["updates"] = " ".join(f"{u['silo']}@{u['base_version']}:{u['weight']:.4g}" for u in r.get("updates", []))
                row["refused"] = " ".join(f"{u['silo']}@{u['base_version']}" for u in r.get("refused", []))
            row.update(r["metrics"])
            writer.writerow(row)
        return stream.getvalue()

    def write_json(self, path: str) -> None:
        """Writes `to_json()` to `path` atomically (a partial file never replaces the old one).

        Args:
            path: the file to write.
        """
        _write_atomically(path, self.to_json())

    def write_csv(self, path: str) -> None:
        """Writes `to_csv()` (one row per step and silo) to `path` atomically.

        Args:
            path: the file to write.
        """
        _write_atomically(path, self.to_csv())

    def release_metrics(self, metrics_managers: Sequence[Any] = (), callbacks: Sequence[Any] = ()) -> None:
        """Hands every round's metrics to metrics managers and callbacks, as `run_training_process` does.

        Args:
            metrics_managers: objects with `release(metrics, round)` (CSV, TensorBoard).
            callbacks: objects with `on_round_end(round, flattened_metrics)` (`simulation.History`).
        """
        for round_num, metrics in self.history:
            for manager in metrics_managers:
                manager.release(metrics, round_num)
            for callback in callbacks:
                callback.on_round_end(round_num, metrics)


def _write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, suffix=".partial") as stream:
        stream.write(text)
    os.replace(stream.name, path)


def _store(config_or_store: Any) -> Store:
    return config_or_store if isinstance(config_or_store, Store) else Store(config_or_store)


def read_step(store: Store, run_id: str, step: str) -> Optional[dict]:
    """One step's server-written record, or None if the step was never opened.

    The one reader of the run record: the lineage, the notebook's round reports and the
    handler's stopping rules all read steps through it.

    Args:
      store: the stack's S3 and DynamoDB.
      run_id: the run.
      step: the step label ("3", or "3.eval").

    Returns:
      `status`, `silos`, `outcome` (the handler's outcome, `{}` until it is done), `cause`,
      `contributors`, `verdicts` (silo -> valid / rejected / late), `rejected` (silo ->
      reason), `late`, `missing` (no verdict), `silo_work_seconds` and `opened_at`.
    """
    item = store.get_item(protocol.round_item_key(run_id, step))
    if item is None:
        return None
    outcome = json.loads(item["outcome"]) if item.get("outcome") else {}
    verdicts = store.round_verdicts(run_id, step)
    silos = list(item["silos"])
    return {
        "status": item["status"],
        "silos": silos,
        "outcome": outcome,
        "cause": item.get("cause"),
        "contributors": outcome.get("aggregated", []),
        "verdicts": {s: v.get("status") for s, v in verdicts.items()},
        "rejected": {s: v.get("reason", "") for s, v in verdicts.items() if v.get("status") == "rejected"},
        "late": sorted(s for s, v in verdicts.items() if v.get("status") == "late"),
        "missing": sorted(s for s in silos if s not in verdicts),
        "silo_work_seconds": {s: v.get("silo_work_seconds") for s, v in verdicts.items() if v.get("status") == "valid"},
        "opened_at": item.get("opened_at"),
    }


def step_outcome(store: Store, run_id: str, step: str) -> dict:
    """The handler's outcome of a done step (metrics, contributors, result...), `{}` otherwise.

    Reads the round item only (not the verdicts): the handler calls it per earlier round.

    Args:
      store: the stack's S3 and DynamoDB.
      run_id: the run.
      step: the step label.

    Returns:
      The outcome document.
    """
    item = store.get_item(protocol.round_item_key(run_id, step)) or {}
    return json.loads(item["outcome"]) if item.get("outcome") else {}


def step_metrics(store: Store, run_id: str, step: str) -> dict:
    """The metrics of a done step (`training/...` or `evaluation/...`), `{}` otherwise.

    Args:
      store: the stack's S3 and DynamoDB.
      run_id: the run.
      step: the step label.

    Returns:
      `{name: value}`.
    """
    return dict(step_outcome(store, run_id, step).get("metrics", {}))


def metrics_history(store: Store, run_id: str, round_num: int, current: dict) -> list:
    """`[(round, metrics), ...]` for rounds 1..round_num (training and evaluation metrics
    together, as `run_training_process` names them); round `round_num`'s are `current`."""
    history = []
    for earlier in range(1, round_num):
        metrics = step_metrics(store, run_id, protocol.step_label(earlier))
        metrics.update(step_metrics(store, run_id, protocol.step_label(earlier, evaluation=True)))
        history.append((earlier, metrics))
    history.append((round_num, current))
    return history


def read_lineage(config_or_store: Any, run_id: str) -> RunLineage:
    """The lineage of run `run_id`, from the server's records only (no silo can rewrite it).

    Args:
      config_or_store: the stack's `StackConfig` (or a `Store`).
      run_id: the run.

    Returns:
      A `RunLineage`. Each round's record: `round`, `status`, `model` (the result's S3 key,
      version id and sha256, and the sha256 of the state it holds), `contributors`, `verdicts`,
      `rejected` (silo -> reason), `late`, `missing`, `metrics` (training and evaluation),
      `evaluation` (the evaluation step's own record, if any), `timings`, `stop_reason`; in an
      asynchronous run, round r is model version r, with `updates` (silo, step, base version,
      staleness, weight of each update applied) and `refused` (with the reason).

    Raises:
      fedsim.aws.store.ObjectAbsentError: there is no such run.
    """
    store = _store(config_or_store)
    manifest = store.get_json(f"runs/{run_id}/manifest.json")
    computations = {f"training_{name}": ref["sha256"] for name, ref in manifest["phases"].items()}
    if manifest.get("preprocess"):
        computations["preprocess"] = manifest["preprocess"]["sha256"]
    if manifest.get("evaluation"):
        computations.update({f"evaluation_{name}": ref["sha256"] for name, ref in manifest["evaluation"]["phases"].items()})
        computations["evaluation_bridge"] = manifest["evaluation"]["bridge"]["sha256"]
    rounds, stop_reason = [], None
    for round_num in range(1, int(manifest["total_rounds"]) + 1):
        training = read_step(store, run_id, protocol.step_label(round_num))
        if training is None:
            break
        outcome = training.pop("outcome")
        evaluation = read_step(store, run_id, protocol.step_label(round_num, evaluation=True))
        metrics = dict(outcome.get("metrics", {}))
        final = outcome
        if evaluation is not None:
            evaluation_outcome = evaluation.pop("outcome")
            metrics.update(evaluation_outcome.get("metrics", {}))
            evaluation["model"] = _model(evaluation_outcome)
            evaluation["timings"] = evaluation_outcome.get("timings", {})
            final = evaluation_outcome or outcome
        record = dict(training, round=round_num, model=_model(outcome), metrics=metrics, timings=outcome.get("timings", {}),
                      evaluation=evaluation, stop_reason=final.get("stop_reason"))
        if "updates" in outcome:  # an asynchronous run's version: the updates it applied, and those refused
            record.update(updates=outcome["updates"], refused=outcome["refused"])
        rounds.append(record)
        stop_reason = final.get("stop_reason") or stop_reason
    return RunLineage(run_id=run_id, computations=computations, rounds=tuple(rounds), stop_reason=stop_reason)


def _model(outcome: dict) -> dict:
    return {"key": outcome.get("result_key"), "version_id": outcome.get("result_version"),
            "sha256": outcome.get("result_sha256"), "state_sha256": outcome.get("state_sha256")}


def _training_form(store: Store, manifest: dict) -> CanonicalForm:
    phases = {name: store.get_computation(ref) for name, ref in manifest["phases"].items()}
    return CanonicalForm.from_phases(ft.type_from_json(manifest["types"]["signature"], "the manifest's signature"), phases)


def _finished_round(lineage: RunLineage, round_num: Optional[int]) -> dict:
    """The record of round `round_num` (default: the last round that produced a model)."""
    done = [r for r in lineage.rounds if r["model"]["key"]]
    if not done:
        raise ValueError(f"run {lineage.run_id} has no finished round")
    chosen = done[-1] if round_num is None else next((r for r in done if r["round"] == round_num), None)
    if chosen is None:
        raise ValueError(f"run {lineage.run_id} has no finished round {round_num} (finished: {[r['round'] for r in done]})")
    return chosen


def _model_weights(store: Store, run_id: str, record: dict) -> Any:
    form = _training_form(store, store.get_json(f"runs/{run_id}/manifest.json"))
    data = store.get_checked(record["model"]["key"], record["model"]["sha256"])
    state = form.next_state(protocol.decode_value(data, form.result_type, f"round {record['round']}'s result"))
    return getattr(state, "global_model_weights", state)


def fetch_global_model(config_or_store: Any, run_id: str, round_num: Optional[int] = None) -> Any:
    """The global model weights after a round, read from that round's stored result and
    checked against the sha256 the server recorded.

    Args:
      config_or_store: the stack's `StackConfig` (or a `Store`).
      run_id: the run.
      round_num: the round (default: the run's last round that produced a model).

    Returns:
      The model weights (`trainable`, `non_trainable`), as `get_model_weights` returns them.

    Raises:
      ValueError: the run has no finished round (`round_num`).
      fedsim.aws.protocol.InvalidValueError: the stored result does not match its record.
    """
    store = _store(config_or_store)
    return _model_weights(store, run_id, _finished_round(read_lineage(store, run_id), round_num))


def export_model(config_or_store: Any, run_id: str, keras_model: Any, round_num: Optional[int] = None) -> dict:
    """Writes the run's global model for serving, next to the run's records (`runs/<run>/model/`):
    a Keras model file, a TensorFlow SavedModel and a model card (run id, round, sha256s), with
    the same facts in the objects' S3 metadata.

    Args:
      config_or_store: the stack's `StackConfig` (or a `Store`).
      run_id: the run.
      keras_model: a Keras model of the run's architecture (e.g. what `model_fn` wraps); its
        weights are replaced by the run's.
      round_num: the round whose model to export (default: the last).

    Returns:
      `{what: S3 key}` of the objects written.

    Raises:
      ValueError: the run has no finished round, or the model's weights do not fit the run's.
    """
    import keras
    import numpy as np

    store = _store(config_or_store)
    chosen = _finished_round(read_lineage(store, run_id), round_num)
    weights = _model_weights(store, run_id, chosen)
    values = [np.asarray(v) for v in list(weights.trainable) + list(weights.non_trainable)]
    variables = list(keras_model.trainable_weights) + list(keras_model.non_trainable_weights)
    if len(values) != len(variables) or any(tuple(v.shape) != tuple(x.shape) for v, x in zip(variables, values)):
        raise ValueError(f"the Keras model's weights {[tuple(v.shape) for v in variables]} do not match the run's "
                         f"{[x.shape for x in values]}")
    for variable, value in zip(variables, values):
        variable.assign(value)
    card = {"run_id": run_id, "round": chosen["round"], "model_key": chosen["model"]["key"],
            "model_version_id": chosen["model"]["version_id"], "model_sha256": chosen["model"]["sha256"],
            "state_sha256": chosen["model"]["state_sha256"], "keras_version": keras.__version__}
    metadata = {"run-id": run_id, "round": str(chosen["round"]), "state-sha256": str(chosen["model"]["state_sha256"])}
    prefix = f"runs/{run_id}/model"
    written = {}
    with tempfile.TemporaryDirectory(prefix="fedsim-export-") as scratch:
        keras_path = os.path.join(scratch, "global_model.keras")
        keras_model.save(keras_path)
        saved_model = os.path.join(scratch, "saved_model")
        keras_model.export(saved_model, verbose=False)
        files = {"global_model.keras": keras_path, "model_card.json": None}
        for root, _, names in os.walk(saved_model):
            for name in names:
                path = os.path.join(root, name)
                files[f"saved_model/{os.path.relpath(path, saved_model)}"] = path
        for name, path in files.items():
            data = json.dumps(card, indent=2).encode() if path is None else open(path, "rb").read()
            store.put_new(f"{prefix}/{name}", data, metadata=metadata)
            written[name] = f"{prefix}/{name}"
    return written
