"""`run_training_process`: the simulation loop around a learning process, as in TFF.

Each round: pick the cohort, call `next`, evaluate every `rounds_per_evaluation` rounds, hand
the metrics to the managers, save the state every `rounds_per_saving_program_state` rounds.
With a state manager that already holds a save, the run resumes after the saved round and
reaches the same final state as an uninterrupted run (the cohort depends only on the round).

Example::

    sample = build_uniform_sampling_fn(train.client_ids, random_seed=0)
    final_state = run_training_process(
        process,
        training_selection_fn=lambda r: [train.create_tf_dataset_for_client(i) for i in sample(r, 10)],
        total_rounds=100,
        program_state_manager=FileProgramStateManager("/tmp/run/state"),
        metrics_managers=[CSVMetricsManager("/tmp/run/metrics.csv")],
    )
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional, Sequence

import keras
from absl import logging

from fedsim.simulation.metrics_managers import flatten_metrics
from fedsim.simulation.program_state import FileProgramStateManager

__all__ = ["run_training_process"]

PRIVACY_LEDGER_FILE = "privacy_ledger.json"  # beside the program state: the rounds' privacy cost, for a resume


def _headline(metrics: dict) -> dict:
    """The loss and the first accuracy of the training metrics, for the progress bar."""
    flat = flatten_metrics(metrics)
    shown = {}
    for name, value in flat.items():
        leaf = name.rsplit("/", 1)[-1]
        if "eval" in name:
            continue
        if leaf == "loss" and "loss" not in shown:
            shown["loss"] = value
        elif "accuracy" in leaf and "accuracy" not in shown:
            shown["accuracy"] = value
    return shown


def run_training_process(
    training_process: Any,
    training_selection_fn: Callable[[int], Any],
    total_rounds: int,
    evaluation_fn: Optional[Callable[[Any, Any], Any]] = None,
    evaluation_selection_fn: Optional[Callable[[int], Any]] = None,
    rounds_per_evaluation: int = 1,
    program_state_manager: Optional[FileProgramStateManager] = None,
    rounds_per_saving_program_state: int = 1,
    metrics_managers: Sequence[Any] = (),
    callbacks: Sequence[Any] = (),
    verbose: int = 1,
    privacy_ledger: Optional[Any] = None,
) -> Any:
    """Runs rounds `1..total_rounds` (or resumes after the last saved one); returns the final state.

    TFF's `tff.simulation.run_training_process`, with Keras-style callbacks and progress.

    Args:
        training_process: an `IterativeProcess` or `LearningProcess`.
        training_selection_fn: `round_num -> next argument` (e.g. a list of client datasets).
        total_rounds: the number of rounds to run (>= 1).
        evaluation_fn: `(state, data) -> metrics`, released under `evaluation`.
        evaluation_selection_fn: `round_num -> data` for `evaluation_fn`; give both or neither.
        rounds_per_evaluation: evaluate every this many rounds (and after the last).
        program_state_manager: a `FileProgramStateManager`; the run resumes from its newest save.
        rounds_per_saving_program_state: save every this many rounds (and after the last).
        metrics_managers: objects with `release(metrics, round_num)` (CSV, TensorBoard, ...).
        callbacks: objects with `on_round_end(round_num, flattened_metrics)`; `History` keeps them
            all, `EarlyStopping` ends the run.
        verbose: 1 a Keras progress bar with ETA (updated in place in notebooks), 2 one line per
            round, 0 silent.
        privacy_ledger: a `fedsim.aggregators.PrivacyLedger`: each round's DP mechanism (from the
            DP aggregators' measurements) and cohort size are recorded, `privacy/epsilon` and
            `privacy/delta` are released with the metrics, and with a budget the run stops
            *before* the round that would exceed it (`privacy_ledger.stop_reason` says why).
            The cohort size is the length of the round's selection. With a program state
            manager, the ledger is saved beside the state and restored on resume.

    Returns:
        The final state, as in TFF (the metrics history comes through a `History` callback).

    Raises:
        ValueError: if `total_rounds` or a period is not a positive int, or only one of the
            evaluation functions is given.

    Example::

        history = fedsim.simulation.History()
        state = fedsim.simulation.run_training_process(
            process, lambda round_num: sample_datasets(round_num), total_rounds=10, callbacks=[history])
    """
    if not isinstance(total_rounds, int) or total_rounds < 1:
        raise ValueError(f"total_rounds must be a positive int, got {total_rounds!r}")
    if (evaluation_fn is None) != (evaluation_selection_fn is None):
        raise ValueError("evaluation_fn and evaluation_selection_fn go together: give both or neither")
    if rounds_per_evaluation < 1 or rounds_per_saving_program_state < 1:
        raise ValueError("rounds_per_evaluation and rounds_per_saving_program_state must be >= 1")

    state = training_process.initialize()
    start_round = 1
    if program_state_manager is not None:
        saved, version = program_state_manager.load_latest(state)
        if saved is None:
            program_state_manager.save(state, 0)
        else:
            state, start_round = saved, version + 1
            logging.info("resuming after round %d from %s", version, program_state_manager.root_dir)
            if privacy_ledger is not None:  # what the rounds before the resume spent
                ledger_path = os.path.join(program_state_manager.root_dir, PRIVACY_LEDGER_FILE)
                if not os.path.exists(ledger_path):
                    raise ValueError(f"resuming after round {version} with a privacy ledger, but {ledger_path} does not "
                                     f"exist: the earlier rounds' privacy cost is unknown")
                privacy_ledger.restore(ledger_path, version)
            for manager in metrics_managers:
                manager.clear_metrics(start_round)

    bar = keras.utils.Progbar(total_rounds, verbose=verbose, unit_name="round", stateful_metrics=["loss", "accuracy"])
    if start_round > 1:
        bar.update(start_round - 1)  # a resumed run counts from where it left off
    for round_num in range(start_round, total_rounds + 1):
        started = time.perf_counter()
        selection = training_selection_fn(round_num)
        if privacy_ledger is not None and privacy_ledger.refusal(state, len(selection)):
            logging.info("training stopped before round %d: %s", round_num, privacy_ledger.stop_reason)
            bar.update(round_num - 1, finalize=True)
            break
        output = training_process.next(state, selection)
        state = output.state
        metrics = {"training": output.metrics, "training_time_in_seconds": time.perf_counter() - started}
        if privacy_ledger is not None:
            metrics["privacy"] = privacy_ledger.record(round_num, output.metrics, len(selection))
        if evaluation_fn is not None and (round_num % rounds_per_evaluation == 0 or round_num == total_rounds):
            evaluation_started = time.perf_counter()
            metrics["evaluation"] = evaluation_fn(state, evaluation_selection_fn(round_num))
            metrics["evaluation_time_in_seconds"] = time.perf_counter() - evaluation_started
        for manager in metrics_managers:
            manager.release(metrics, round_num)
        flat = flatten_metrics(metrics)
        for callback in callbacks:
            callback.on_round_end(round_num, flat)
        stopping = any(getattr(callback, "stop_training", False) for callback in callbacks)
        last = round_num == total_rounds or stopping
        if program_state_manager is not None and (round_num % rounds_per_saving_program_state == 0 or last):
            if privacy_ledger is not None:  # before the state: a saved state never has fewer rounds accounted
                privacy_ledger.save(os.path.join(program_state_manager.root_dir, PRIVACY_LEDGER_FILE))
            program_state_manager.save(state, round_num)
        bar.update(round_num, values=list(_headline(output.metrics).items()), finalize=last)
        if stopping:
            logging.info("training stopped by a callback after round %d of %d", round_num, total_rounds)
            break
    return state
