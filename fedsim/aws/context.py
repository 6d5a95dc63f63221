"""The AWS execution context: a canonical-form computation runs as serverless rounds.

Inside `with fedsim.aws.execution_context(stack, silos=[...]):`, calling a computation of the
shape `(state@SERVER, client_input@CLIENTS)` runs one round through the server: the phases are
uploaded once (content-addressed), `prepare` runs here for the first round, the state machine
publishes the round, the silos run `work`, the aggregation handler runs the rest, and the call
returns the same Python structures as the local context. Anything else (e.g. `initialize`)
runs in the local context. The CLIENTS argument is the list of silo ids that take part.
`run_rounds` starts N rounds and leaves them to the server.

Example::

    with LocalStack(["a", "b", "c"]) as stack, fedsim.aws.execution_context(stack, silos=["a", "b", "c"]):
        state = process.initialize()
        output = process.next(state, ["a", "b", "c"])
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from typing import Any, Iterator, Optional, Sequence

import attrs
from absl import logging

from fedsim.aws import protocol, secure_round
from fedsim.aws.asynchronous import open_async_run
from fedsim.aws.config import StackConfig
from fedsim.aws.rounds import open_round
from fedsim.aws.lineage import RunLineage, read_lineage, read_step
from fedsim.aws.store import Store, retrying
from fedsim.core import canonical_form, compiler, context_stack, structure
from fedsim.core import staleness as staleness_lib
from fedsim.core.wrappers import federated_computation, tf_computation
from fedsim.core import types as ft
from fedsim.core.federated_tracing import FederatedComputation
from fedsim.core.local_context import LocalExecutionContext
from fedsim.core.placements import CLIENTS, SERVER

__all__ = ["AwsExecutionContext", "RoundFailedError", "RoundReport", "execution_context"]


class RoundFailedError(RuntimeError):
    """A serverless round did not complete; the message says which round and why."""


@attrs.frozen
class RoundReport:
    """What happened in a run: per round, the silos aggregated and those rejected (with reasons)."""

    run_id: str
    rounds: tuple  # of dicts: round, aggregated, rejected, result_key
    seconds: float


class AwsExecutionContext:
    """Runs computations of the shape `(state@SERVER, input@CLIENTS)` as serverless rounds.

    Installed with `execution_context(stack, silos=[...])`; anything else (e.g. `initialize`)
    runs in a local context. The CLIENTS argument of a round is a list of silo ids.

    Args:
      config: the stack (`LocalStack.config`, or `StackConfig.from_stack(...)` on AWS).
      silos: the silos this context may ask to take part.
      quorum: valid results a round needs (default: every silo of the round).
      round_deadline_seconds: a round not aggregated by then fails, naming who did not report.
      max_result_bytes: the largest silo upload the server reads.
      preprocess: a `tf_computation` each silo applies to its datasets before the work (sent
        once, pinned by silos like the work).
      poll_seconds: how often the caller checks a running execution.
      pickup_timeout_seconds: a round whose message no silo has taken by then fails at once (the
        silo agents are probably not running) instead of at its deadline; None waits.
      secure_neighbours: for computations with secure sums: None runs SecAgg (every silo masks
        with every other); an even k runs SecAgg+ (Bell et al. 2020: masks and secret shares
        with k neighbours on a Harary graph the session's digest orders), whose cost grows with
        k, not with the silos. The threshold is then a majority of a neighbourhood.

    Raises:
      ValueError: a silo is not one of the stack's, or the quorum is out of range.
      fedsim.aws.StackUnreachableError: the stack does not answer.

    Example::

        with fedsim.aws.execution_context(stack, silos=["a", "b"]) as context:
            output = process.next(process.initialize(), ["a", "b"])
            context.last_run.history   # metrics per round, from the server's records
    """

    def __init__(
        self,
        config: StackConfig,
        silos: Sequence[str],
        quorum: Optional[int] = None,
        round_deadline_seconds: int = 300,
        max_result_bytes: int = 256 * 2**20,
        preprocess: Any = None,
        poll_seconds: float = 0.05,
        pickup_timeout_seconds: Optional[float] = 120.0,
        secure_neighbours: Optional[int] = None,
    ):
        silos = list(silos)
        unknown = [s for s in silos if s not in config.silo_queues]
        if not silos or unknown:
            raise ValueError(f"silos {unknown or silos} are not silos of this stack (it has {sorted(config.silo_queues)})")
        quorum = len(silos) if quorum is None else quorum
        if not 1 <= quorum <= len(silos):
            raise ValueError(f"quorum must be from 1 to {len(silos)}, got {quorum}")
        if secure_neighbours is not None and (not isinstance(secure_neighbours, int) or secure_neighbours < 2 or secure_neighbours % 2):
            raise ValueError(f"secure_neighbours must be an even number >= 2 (SecAgg+), got {secure_neighbours!r}")
        config.check_reachable()
        self.config = config
        self.silos = silos
        self.quorum = quorum
        self.round_deadline_seconds = int(round_deadline_seconds)
        self.max_result_bytes = int(max_result_bytes)
        self.preprocess = preprocess
        self.poll_seconds = poll_seconds
        self.pickup_timeout_seconds = pickup_timeout_seconds
        self.secure_neighbours = secure_neighbours
        self.store = Store(config)
        self.sqs = config.client("sqs")
        self.sfn = config.client("stepfunctions")
        self.local = LocalExecutionContext()
        self._forms: dict = {}
        self._phase_references: dict = {}
        self._preprocess_reference: Optional[dict] = None
        self.last_report: Optional[RoundReport] = None
        self.last_run: Optional[RunLineage] = None  # the last run's lineage (metrics history, contributors, models)

    # the context protocol ---------------------------------------------------------------------

    def invoke(self, computation: Any, argument: Any) -> Any:
        """The context protocol: one serverless round for a computation over silos, else local.

        A computation with a CLIENTS-placed parameter is called as `next(state, silo_ids)`: one
        round on the silos; any other runs in the local context.

        Args:
            computation: the computation being called.
            argument: its argument; for a round, `(state, silo_ids)`.

        Returns:
            The computation's result, as the local context returns it.

        Raises:
            RoundFailedError: if the round fails or misses its deadline.
        """
        if not _has_clients_parameter(computation):
            return self.local.invoke(computation, argument)
        state, silo_ids = structure.struct_elements(argument, computation.type_signature.parameter)
        return self.run_rounds(computation, state, silo_ids, rounds=1)

    # rounds -------------------------------------------------------------------------------------

    def form(self, computation: FederatedComputation) -> canonical_form.CanonicalForm:
        """`computation`'s canonical form (compiled once per computation).

        Args:
            computation: a federated computation `(state@SERVER, data@CLIENTS) -> ...`.

        Returns:
            Its `CanonicalForm`.

        Raises:
            CanonicalFormError: if it has none.
        """
        key = id(computation)
        if key not in self._forms:
            self._forms[key] = (computation, compiler.compile_to_canonical_form(computation))
        return self._forms[key][1]

    def start_rounds(self, computation: Any, state: Any, silo_ids: Sequence[str], rounds: int = 1, *,
                     evaluation: Any = None, evaluation_state: Any = None, evaluate_every: int = 1,
                     stop_rules: Sequence[Any] = (), train_dataset: Optional[str] = None, eval_dataset: str = "test",
                     privacy_ledger: Any = None) -> tuple:
        """Uploads what the server needs and starts the state machine; the rounds then run
        without this process (the handler opens each next step).

        Args:
          computation: a process's `next`, or the process (needed with `evaluation`: its
            `get_model_weights` picks the model to evaluate).
          state: the server state of round 1.
          silo_ids: the silos that take part.
          rounds: at most this many rounds.
          evaluation: an evaluation process (`build_fed_eval`) or a federated evaluation
            computation (`build_federated_evaluation`), run on each silo's `eval_dataset` on the
            new global model after every `evaluate_every`-th round and the last.
          evaluation_state: the evaluation process's initial state (default: its `initialize()`).
          evaluate_every: see `evaluation`.
          stop_rules: `StopWhen` / `StopWhenNoImprovement` on any training or evaluation metric,
            judged by the server after each round.
          train_dataset: the silos' dataset to train on (default: `train`, or a silo's only one).
          eval_dataset: the silos' dataset to evaluate on.
          privacy_ledger: a `fedsim.aggregators.PrivacyLedger`: the handler keeps it (each
            round's DP mechanism and cohort, `privacy/epsilon` in the metrics and the lineage)
            and ends the run before a round that would exceed its budget, with the reason.

        Returns:
          `(run_id, execution_arn)`; pass them to `finish`.

        Raises:
          ValueError: a silo id, `rounds`, `evaluate_every` or a stop rule is invalid.
          fedsim.aws.store.TransientStoreError: AWS kept failing; nothing was started twice.
        """
        silo_ids = self._check_silo_ids(silo_ids)
        if not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"rounds must be a positive int, got {rounds!r}")
        if not isinstance(evaluate_every, int) or evaluate_every < 1:
            raise ValueError(f"evaluate_every must be a positive int, got {evaluate_every!r}")
        training = getattr(computation, "next", computation)
        form = self.form(training)
        state = self._checked_state(training, form, state)
        run_id = uuid.uuid4().hex[:16]
        manifest = self._run_manifest(run_id, training, form, rounds, stop_rules, train_dataset)
        manifest.update(self._secure_section(form, len(silo_ids)))
        if self.preprocess is not None:
            manifest["preprocess"] = self._preprocess()
        if privacy_ledger is not None:
            manifest["privacy"] = privacy_ledger.to_json()
        if evaluation is not None:
            manifest["evaluation"] = self._evaluation_manifest(computation, form, state, evaluation, evaluation_state, run_id,
                                                               eval_dataset, evaluate_every, len(silo_ids))
        manifest_key = f"runs/{run_id}/manifest.json"
        self.store.put_new(manifest_key, protocol.dumps(manifest))
        template = {"silos": silo_ids, "quorum": min(self.quorum, len(silo_ids)), "manifest_key": manifest_key}
        open_round(self.store, form, state, run_id, protocol.step_label(1), template)
        return run_id, self._start_execution(f"run-{run_id}", json.dumps({
            "run_id": run_id, "round": 1, "manifest_key": manifest_key, "silos": silo_ids,
            "round_deadline_seconds": self.round_deadline_seconds}))

    def _checked_state(self, training: FederatedComputation, form: canonical_form.CanonicalForm, state: Any) -> Any:
        state_type = form.type_signature.parameter[0].member
        return structure.check_and_normalize(state, state_type, f"the server state given to {training.name}")

    def _run_manifest(self, run_id: str, training: FederatedComputation, form: canonical_form.CanonicalForm, rounds: int,
                      stop_rules: Sequence[Any], train_dataset: Optional[str]) -> dict:
        """What every run's manifest says: its phases (uploaded once), types, dataset and limits."""
        for rule in stop_rules:
            if not hasattr(rule, "to_json") or not hasattr(rule, "reason"):
                raise TypeError(f"stop_rules holds stopping rules (fedsim.aws.StopWhen, StopWhenNoImprovement), got {rule!r}")
        return {
            "run_id": run_id,
            "computation": training.name,
            "phases": self._uploaded_phases(form),
            "types": form.types_json(),
            "dataset": train_dataset,
            "max_result_bytes": self.max_result_bytes,
            "total_rounds": rounds,
            "stop_rules": [rule.to_json() for rule in stop_rules],
        }

    def _check_silo_ids(self, silo_ids: Sequence[str]) -> list:
        silo_ids = list(silo_ids)
        unknown = [s for s in silo_ids if s not in self.silos]
        if not silo_ids or unknown:
            raise ValueError(f"the clients of a round are silo ids from {self.silos}; got {silo_ids}")
        return silo_ids

    # asynchronous runs ----------------------------------------------------------------------------

    def start_async(self, computation: Any, state: Any, silo_ids: Sequence[str], total_versions: int, *,
                    buffer_size: Optional[int] = None, staleness_weight: Any = None, max_staleness: Optional[int] = None,
                    stop_rules: Sequence[Any] = (), train_dataset: Optional[str] = None,
                    deadline_seconds: int = 3600) -> tuple:
        """Starts an asynchronous (FedBuff) run: the silos work continuously on the newest model
        version and the server publishes a version after every `buffer_size` accepted updates
        (see `fedsim.aws.asynchronous`).

        Args:
          computation: a training process (or its `next`) whose aggregations are sums and means.
          state: the server state of version 0.
          silo_ids: the silos that take part.
          total_versions: the run ends after this many versions (or a stopping rule).
          buffer_size: K, accepted updates per version, at most the number of silos (a silo
            trains at most once per version); default: half the silos, rounded up.
          staleness_weight: `fedsim.core.staleness.polynomial_staleness(e)` (default, e=0.5) or
            `constant_staleness()`.
          max_staleness: updates staler than this are refused and recorded (None: none are).
          stop_rules: `StopWhen` / `StopWhenNoImprovement` on the versions' metrics.
          train_dataset: the silos' dataset to train on.
          deadline_seconds: the whole run fails if it has not ended by then.

        Returns:
          `(run_id, execution_arn)`; pass them to `finish`.

        Raises:
          fedsim.core.staleness.AsyncUnsupportedError: the process's aggregation is not a
            weighted sum or mean (the message says why).
          ValueError: a silo id or setting is invalid.
        """
        silo_ids = self._check_silo_ids(silo_ids)
        if not isinstance(total_versions, int) or total_versions < 1:
            raise ValueError(f"total_versions must be a positive int, got {total_versions!r}")
        buffer_size = -(-len(silo_ids) // 2) if buffer_size is None else buffer_size
        if not isinstance(buffer_size, int) or not 1 <= buffer_size <= len(silo_ids):
            raise ValueError(f"buffer_size must be from 1 to the {len(silo_ids)} silos (a silo trains at most once per "
                             f"version, so a larger buffer never fills), got {buffer_size!r}")
        training = getattr(computation, "next", computation)
        form = self.form(training)
        staleness_lib.check_bufferable(form, f"the process {training.name!r}")
        weight = staleness_lib.polynomial_staleness() if staleness_weight is None else staleness_weight
        staleness_lib.StalenessBuffer(form, buffer_size, weight, max_staleness)  # checks the settings here, not on the server
        state = self._checked_state(training, form, state)
        run_id = uuid.uuid4().hex[:16]
        manifest = self._run_manifest(run_id, training, form, total_versions, stop_rules, train_dataset)
        manifest.update({"mode": protocol.ASYNCHRONOUS, protocol.ASYNCHRONOUS: {
            "buffer_size": buffer_size, "max_staleness": max_staleness, "aggregation_kinds": list(form.aggregation_kinds),
            "staleness_weight": staleness_lib.staleness_weight_to_json(weight)}})
        if self.preprocess is not None:
            manifest["preprocess"] = self._preprocess()
        manifest_key = f"runs/{run_id}/manifest.json"
        self.store.put_new(manifest_key, protocol.dumps(manifest))
        open_async_run(self.store, run_id, manifest_key)
        template = {"silos": silo_ids, "quorum": 1, "manifest_key": manifest_key, "mode": protocol.ASYNCHRONOUS}
        open_round(self.store, form, state, run_id, protocol.step_label(1), template)
        return run_id, self._start_execution(f"run-{run_id}", json.dumps({
            "run_id": run_id, "round": 1, "manifest_key": manifest_key, "silos": silo_ids,
            "round_deadline_seconds": int(deadline_seconds)}))

    def run_async(self, computation: Any, state: Any, silo_ids: Sequence[str], total_versions: int, *,
                  metrics_managers: Sequence[Any] = (), callbacks: Sequence[Any] = (), **options: Any) -> Any:
        """Runs an asynchronous (FedBuff) training run on the silos and waits for its end; the
        serverless counterpart of `fedsim.simulation.run_async_training_process`.

        Args:
          computation, state, silo_ids, total_versions: as in `start_async`.
          metrics_managers: receive each version's metrics (`training/...` and `async/...`:
            updates, mean and max staleness, refused), as in `run_training_process`.
          callbacks: Keras-style callbacks (e.g. `simulation.History`) given the same metrics.
          **options: `start_async`'s keyword arguments (buffer size, staleness, stop rules...).

        Returns:
          The last version's result (`LearningProcessOutput`), as `run_rounds` returns the last
          round's. `last_run` holds the lineage: per version, the updates applied (silo, base
          version, staleness, weight) and those refused.

        Raises:
          RoundFailedError: the run failed or missed its deadline; the message says why.
          fedsim.core.staleness.AsyncUnsupportedError: see `start_async`.

        Example::

            with fedsim.aws.execution_context(stack, silos=silos) as context:
                output = context.run_async(process, process.initialize(), silos, total_versions=20, buffer_size=3)
                context.last_run.rounds[-1]["updates"]   # who made version 20, from which versions
        """
        started = time.monotonic()
        run_id, execution = self.start_async(computation, state, silo_ids, total_versions, **options)
        return self.finish(getattr(computation, "next", computation), run_id, execution, 1, started,
                           metrics_managers=metrics_managers, callbacks=callbacks,
                           timeout=int(options.get("deadline_seconds", 3600)) + 60)

    def _start_execution(self, name: str, document: str) -> str:
        """Starts the state machine once, retrying AWS's transient failures. A retried start whose
        first attempt was applied finds its own execution (AWS answers with it; moto says it exists)."""
        attempts = {"n": 0}

        def start() -> str:
            attempts["n"] += 1
            return self.sfn.start_execution(stateMachineArn=self.config.state_machine_arn, name=name, input=document)["executionArn"]

        try:
            return retrying(start, f"starting execution {name}")
        except self.sfn.exceptions.ExecutionAlreadyExists:
            if attempts["n"] == 1:
                raise
            return self.config.state_machine_arn.replace(":stateMachine:", ":execution:") + f":{name}"

    def _secure_section(self, form: canonical_form.CanonicalForm, silo_count: int) -> dict:
        """A step's secure sums, which run as SecAgg on silos (training's and evaluation's
        alike, with no flag): their bitwidths, the threshold and SecAgg+ neighbours; {} if none."""
        secure_sums = _secure_sums(form)
        if not secure_sums:
            return {}
        section = {"secure_sums": secure_sums,
                   "secure_threshold": secure_round.default_threshold(self.quorum, silo_count, self.secure_neighbours)}
        if self.secure_neighbours is not None:
            section["secure_neighbours"] = self.secure_neighbours
        return section

    def _evaluation_manifest(self, training_process: Any, form: canonical_form.CanonicalForm, training_state: Any,
                             evaluation: Any, evaluation_state: Any, run_id: str, dataset: str, every: int,
                             silo_count: int) -> dict:
        """The evaluation step's part of the manifest: its phases, the bridge that puts each new
        global model into the evaluation's state (run by the handler), and its initial state."""
        if not hasattr(training_process, "get_model_weights"):
            raise TypeError("with evaluation, give the training process itself (not its next computation): "
                            "its get_model_weights picks the model to evaluate")
        step, put_model, initial_state = _evaluation_step(evaluation, training_process, training_state)
        evaluation_form = self.form(step)
        if evaluation_state is None:
            evaluation_state = initial_state()
        evaluation_state = structure.check_and_normalize(evaluation_state, evaluation_form.state_type, "the evaluation state")

        @tf_computation(form.state_type, evaluation_form.state_type)
        def model_to_evaluation_state(training_state, state):
            return put_model(state, training_process.get_model_weights(training_state))

        initial_state_key = f"runs/{run_id}/evaluation-initial-state.npz"
        self.store.put_new(initial_state_key, protocol.encode_value(evaluation_state, evaluation_form.state_type))
        return {
            "computation": step.name,
            "phases": self._uploaded_phases(evaluation_form),
            "types": evaluation_form.types_json(),
            "dataset": dataset,
            "every": every,
            "bridge": self.store.put_computation(model_to_evaluation_state),
            "initial_state_key": initial_state_key,
            **self._secure_section(evaluation_form, silo_count),
        }

    def run_rounds(self, computation: Any, state: Any, silo_ids: Sequence[str], rounds: int = 1, *,
                   metrics_managers: Sequence[Any] = (), callbacks: Sequence[Any] = (), **options: Any) -> Any:
        """Runs up to `rounds` rounds on the server and waits for them.

        Args:
          computation, state, silo_ids, rounds: as in `start_rounds`.
          metrics_managers: receive each round's metrics, as in `run_training_process`.
          callbacks: Keras-style callbacks (e.g. `simulation.History`) given the same metrics.
          **options: `start_rounds`' keyword arguments (evaluation, stop rules, datasets).

        Returns:
          The last round's result, as the local context returns it. `last_run` holds the run's
          lineage and `last_report` its per-round report.

        Raises:
          RoundFailedError: a round failed or missed its deadline; the message says which and why.
        """
        started = time.monotonic()
        run_id, execution = self.start_rounds(computation, state, silo_ids, rounds, **options)
        try:
            return self.finish(getattr(computation, "next", computation), run_id, execution, rounds, started,
                               metrics_managers=metrics_managers, callbacks=callbacks)
        finally:
            ledger = options.get("privacy_ledger")
            if ledger is not None and self.last_run is not None:  # the notebook's ledger shows what the server kept
                ledger.replay([(r["round"], r["metrics"], len(r["contributors"])) for r in self.last_run.rounds if r["status"] == "done"],
                              self.last_run.stop_reason)

    def finish(self, computation: FederatedComputation, run_id: str, execution: str, rounds: int = 1,
               started: Optional[float] = None, metrics_managers: Sequence[Any] = (), callbacks: Sequence[Any] = (),
               timeout: Optional[float] = None) -> Any:
        """Waits for a run `start_rounds` started.

        Args:
          computation: the process's `next` (to decode the result).
          run_id, execution: what `start_rounds` returned.
          rounds: the rounds asked for (bounds the wait).
          started: `time.monotonic()` when the run was started (for the report's seconds).
          metrics_managers, callbacks: as in `run_rounds`.
          timeout: seconds to wait at most (default: twice each round's deadline).

        Returns:
          The last round's result.

        Raises:
          RoundFailedError: the run failed; the message names the round, the silos missing or
            rejected and why.
        """
        started = time.monotonic() if started is None else started
        if timeout is None:
            timeout = rounds * 2 * (self.round_deadline_seconds + 60)
        status = self.wait(execution, timeout=timeout, run_id=run_id)
        reports = self._round_reports(run_id)
        self.last_report = RoundReport(run_id, tuple(reports), time.monotonic() - started)
        self.last_run = read_lineage(self.store, run_id)
        self.last_run.release_metrics(metrics_managers, callbacks)
        if status["status"] != "SUCCEEDED":
            raise RoundFailedError(self._failure_message(run_id, status, reports))
        last = reports[-1]
        form = self.form(computation)
        data = self.store.get_checked(last["result_key"])
        return protocol.decode_value(data, form.update.type_signature.result, f"round {last['round']}'s result")

    def silo_computation_hashes(self, computation: Any, evaluation: Any = None) -> dict:
        """What silos run for `computation`, to give to silo operators: they review each
        (`python -m fedsim.aws.review --hash`) and pin it (`python -m fedsim.aws.silo ... --accept HASH,HASH`).

        Args:
          computation: the training process (or its `next`).
          evaluation: the evaluation run in the same runs, if any.

        Returns:
          `{phase: sha256}` (`work`, and `evaluation_work`, `preprocess` when they exist); the
          computations are uploaded if they were not. A work whose output goes through secure
          sums is pinned with its secure layout (`protocol.work_pin`).
        """
        form = self.form(getattr(computation, "next", computation))
        hashes = {"work": protocol.work_pin(self._uploaded_phases(form)["work"]["sha256"], _secure_sums(form))}
        if evaluation is not None:
            evaluation_form = self.form(_evaluation_step(evaluation, computation, None)[0])
            hashes["evaluation_work"] = protocol.work_pin(self._uploaded_phases(evaluation_form)["work"]["sha256"],
                                                          _secure_sums(evaluation_form))
        if self.preprocess is not None:
            hashes["preprocess"] = self._preprocess()["sha256"]
        return hashes

    def _preprocess(self) -> dict:
        if self._preprocess_reference is None:
            self._preprocess_reference = self.store.put_computation(self.preprocess)
        return self._preprocess_reference

    def _uploaded_phases(self, form: canonical_form.CanonicalForm) -> dict:
        """The phases' S3 references: serialized and uploaded once per form, not once per round."""
        key = id(form)
        if key not in self._phase_references:
            self._phase_references[key] = {name: self.store.put_computation(phase) for name, phase in form.phases().items()}
        return self._phase_references[key]

    def wait(self, execution_arn: str, timeout: float, run_id: Optional[str] = None) -> dict:
        """Polls the execution until it ends.

        Args:
          execution_arn: the execution.
          timeout: seconds to wait at most.
          run_id: with it, logs who has reported in each round and fails early when no silo
            takes a round's message within `pickup_timeout_seconds`.

        Returns:
          Step Functions' description of the ended execution.

        Raises:
          RoundFailedError: it is still running after `timeout`, or no silo took a round.
        """
        deadline = time.monotonic() + timeout
        watch = _RoundWatch(self, run_id) if run_id is not None else None
        while True:
            description = retrying(lambda: self.sfn.describe_execution(executionArn=execution_arn), "polling the execution")
            if description["status"] != "RUNNING":
                return description
            if time.monotonic() > deadline:
                raise RoundFailedError(f"the execution {execution_arn} is still running after {timeout:.0f}s")
            if watch is not None:
                unpicked = watch.check()
                if unpicked:
                    retrying(lambda: self.sfn.stop_execution(executionArn=execution_arn, error="NoSiloAnswered", cause=unpicked),
                             "stopping the execution")
                    raise RoundFailedError(f"serverless run {run_id} stopped: {unpicked}")
            time.sleep(self.poll_seconds)

    def _step_report(self, run_id: str, step: str) -> Optional[dict]:
        """A step's report: the server's record (`lineage.read_step`), with the outcome's fields
        at the top, and who has reported so far (from the silos' records: progress, not truth)."""
        record = read_step(self.store, run_id, step)
        if record is None:
            return None
        entry = {"round": protocol.parse_step(step)[0], "step": step, "status": record["status"], "silos": record["silos"]}
        entry.update(record["outcome"])
        if record["cause"]:
            entry["cause"] = record["cause"]
        results = self.store.round_results(run_id, step)
        entry["reported"] = sorted(r["pk"] for r in results)
        entry["opened_at"] = record["opened_at"]
        entry["silo_timings"] = {
            r["pk"]: {k: r.get(k) for k in ("received_at", "work_seconds", "written_at")} for r in results
        }
        entry["verdicts"] = record["verdicts"]
        entry.setdefault("rejected", record["rejected"])
        return entry

    def _round_reports(self, run_id: str) -> list:
        """Each round's report (its evaluation step's, if any, under `evaluation`)."""
        reports, round_num = [], 1
        while True:
            entry = self._step_report(run_id, protocol.step_label(round_num))
            if entry is None:
                return reports
            evaluation = self._step_report(run_id, protocol.step_label(round_num, evaluation=True))
            if evaluation is not None:
                entry["evaluation"] = evaluation
            reports.append(entry)
            round_num += 1

    def _failure_message(self, run_id: str, status: dict, reports: list) -> str:
        last = reports[-1] if reports else {"round": 1, "step": "1", "reported": [], "silos": self.silos, "rejected": {}}
        if last.get("status") == "done" and "evaluation" in last:  # the run ended in the round's evaluation step
            last = last["evaluation"]
        error, cause = status.get("error", ""), status.get("cause", "")
        missing = [s for s in last["silos"] if s not in last["reported"]]
        if error == "States.Timeout":
            reason = (
                f"round {last['step']} (status: {last.get('status', 'not opened')}) missed its deadline of {self.round_deadline_seconds}s: "
                f"{len(last['reported'])} of {len(last['silos'])} silos reported (missing: {', '.join(missing) or 'none'}), "
                f"quorum {self.quorum}"
            )
        else:
            reason = last.get("cause") or f"{error}: {cause}"
        rejected = "; ".join(f"{s}: {r}" for s, r in sorted(last.get("rejected", {}).items()))
        return f"serverless run {run_id} failed: {reason}" + (f" (rejected: {rejected})" if rejected and rejected not in reason else "")


class _RoundWatch:
    """Progress of a run as the notebook waits: who has reported, and whether anyone took the round."""

    CHECK_EVERY_SECONDS = 1.0

    def __init__(self, context: AwsExecutionContext, run_id: str):
        self.context, self.run_id = context, run_id
        self.round_num, self.step, self.step_seen_at = 0, None, time.monotonic()
        self.reported: frozenset = frozenset()
        self.next_check = 0.0

    def check(self) -> Optional[str]:
        """None, or why the run should stop now (no silo took the open step's message)."""
        now = time.monotonic()
        if now < self.next_check:
            return None
        self.next_check = now + self.CHECK_EVERY_SECONDS
        store = self.context.store
        while store.get_item(protocol.round_item_key(self.run_id, protocol.step_label(self.round_num + 1))) is not None:
            self.round_num += 1
        if self.round_num == 0:
            return None
        step = protocol.step_label(self.round_num, evaluation=True)  # the round's evaluation, once it is open
        item = store.get_item(protocol.round_item_key(self.run_id, step))
        if item is None:
            step = protocol.step_label(self.round_num)
            item = store.get_item(protocol.round_item_key(self.run_id, step))
        if step != self.step:
            self.step, self.step_seen_at, self.reported = step, now, frozenset()
        reported = frozenset(r["pk"] for r in store.round_results(self.run_id, step))
        what = f"round {self.round_num}" + ("'s evaluation" if step.endswith(protocol.EVALUATION_SUFFIX) else "")
        if reported != self.reported:
            self.reported = reported
            logging.info("run %s %s: %d of %d silos reported (%s); waiting for %s", self.run_id, what,
                         len(reported), len(item["silos"]), ", ".join(sorted(reported)) or "none",
                         ", ".join(s for s in item["silos"] if s not in reported) or "nobody")
        timeout = self.context.pickup_timeout_seconds
        if reported or item.get("status") != "open" or timeout is None or now - self.step_seen_at < timeout:
            return None
        if any(self._taken(silo) for silo in item["silos"]):
            return None
        return (f"{what}: no silo took the round's message within {timeout:.0f}s "
                f"(silos {', '.join(item['silos'])}); are the silo agents running? "
                f"(python -m fedsim.aws.silo --stack-config ... --silo-id ...)")

    def _taken(self, silo: str) -> bool:
        """Whether the silo's queue shows its message received (in flight) or already gone."""
        attributes = self.context.sqs.get_queue_attributes(
            QueueUrl=self.context.config.silo_queues[silo],
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)) > 0 or int(attributes.get("ApproximateNumberOfMessages", 0)) == 0


def _evaluation_step(evaluation: Any, training_process: Any, training_state: Any) -> tuple:
    """`(step computation, put_model(state, weights) -> state, initial_state())` of an evaluation.

    An evaluation process (`build_fed_eval`) is used as it is. A federated evaluation computation
    `(model_weights@SERVER, data@CLIENTS) -> metrics@SERVER` (`build_federated_evaluation`) becomes
    a step whose state is the model it evaluates (at first, the run's initial model).
    """
    if hasattr(evaluation, "next") and hasattr(evaluation, "set_model_weights"):
        return evaluation.next, evaluation.set_model_weights, evaluation.initialize
    signature = getattr(evaluation, "type_signature", None)
    parameter = getattr(signature, "parameter", None)
    if (not isinstance(parameter, ft.StructType) or len(parameter) != 2
            or not all(isinstance(t, ft.FederatedType) for t in parameter)
            or parameter[0].placement is not SERVER or parameter[1].placement is not CLIENTS):
        raise TypeError("evaluation is an evaluation process (build_fed_eval) or a federated computation "
                        f"(model_weights@SERVER, data@CLIENTS) -> metrics (build_federated_evaluation); got {evaluation!r}")

    @federated_computation(parameter[0], parameter[1])
    def evaluation_step(model_weights, client_data):
        return model_weights, evaluation(model_weights, client_data)

    return evaluation_step, lambda state, model_weights: model_weights, lambda: training_process.get_model_weights(training_state)


def _has_clients_parameter(computation: Any) -> bool:
    if not isinstance(computation, FederatedComputation):
        return False
    parameter = computation.type_signature.parameter
    leaves = [parameter] if not isinstance(parameter, ft.StructType) else list(parameter)
    return any(isinstance(t, ft.FederatedType) and t.placement is CLIENTS for t in leaves)


@contextlib.contextmanager
def execution_context(stack_or_config: Any, silos: Sequence[str], **options: Any) -> Iterator[AwsExecutionContext]:
    """Installs an `AwsExecutionContext` for the `with` block.

    Args:
      stack_or_config: a `LocalStack` or a `StackConfig`.
      silos: the silos the context may use.
      **options: `AwsExecutionContext`'s other arguments (quorum, deadline, preprocess...).

    Returns:
      A context manager yielding the installed context.

    Raises:
      TypeError: `stack_or_config` is neither.

    Example::

        with fedsim.aws.execution_context(stack, silos=["a", "b", "c"], quorum=2) as context:
            state = process.next(state, ["a", "b", "c"]).state
    """
    config = getattr(stack_or_config, "config", stack_or_config)
    if not isinstance(config, StackConfig):
        raise TypeError(f"execution_context needs a LocalStack or a StackConfig, got {type(stack_or_config).__name__}")
    context = AwsExecutionContext(config, silos, **options)
    with context_stack.execution_context(context):
        yield context


def _secure_sums(form: canonical_form.CanonicalForm) -> Optional[list]:
    """The manifest's `secure_sums` of a form (per aggregation: None or its bitwidths), or None
    when no aggregation is a secure sum."""
    if not any(bitwidths is not None for bitwidths in form.secure_bitwidths):
        return None
    return [None if bitwidths is None else list(bitwidths) for bitwidths in form.secure_bitwidths]
