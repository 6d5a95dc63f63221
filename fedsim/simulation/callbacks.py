"""Callbacks for `run_training_process`, as Keras users know them: `on_round_end`, a history,
early stopping.

A callback is any object with `on_round_end(round_num, metrics)` (metrics flattened to
`training/client_work/train/loss`-style names); one that sets `stop_training = True` ends the
run after that round (its state is saved, as at any last round).

Example::

    history = fedsim.simulation.History()
    stop = fedsim.simulation.EarlyStopping("training/client_work/train/loss", patience=3)
    state = fedsim.simulation.run_training_process(process, select, 100, callbacks=[history, stop])
    history.history["training/client_work/train/loss"]   # one value per round, like keras.callbacks.History
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from absl import logging

__all__ = ["Callback", "History", "EarlyStopping"]


class Callback:
    """The base class: override `on_round_end`; set `stop_training` to end the run."""

    stop_training = False

    def on_round_end(self, round_num: int, metrics: Mapping[str, Any]) -> None:
        """Called after each round with its flattened metrics.

        Args:
            round_num: the round that ended (1-based).
            metrics: its metrics flattened to `"a/b": number` (training and, when evaluated, `evaluation/...`).
        """


class History(Callback):
    """Every round's metrics: `history[name]` is the list of values, `rounds` the rounds they came from."""

    def __init__(self):
        self.rounds: list = []
        self.history: dict = {}

    def on_round_end(self, round_num: int, metrics: Mapping[str, Any]) -> None:
        """Appends the round's metrics (see `Callback.on_round_end`).

        Args:
            round_num: the round that ended.
            metrics: its flattened metrics.
        """
        self.rounds.append(round_num)
        for name, value in metrics.items():
            self.history.setdefault(name, [None] * (len(self.rounds) - 1)).append(value)
        for values in self.history.values():
            if len(values) < len(self.rounds):
                values.append(None)  # a metric this round did not report (e.g. no evaluation)


class EarlyStopping(Callback):
    """Stops when `monitor` has not improved by `min_delta` for `patience` rounds (Keras' rule).

    Rounds where the metric is absent (not evaluated) are not counted. `stopped_round` and
    `reason` say when and why it stopped.

    Args:
        monitor: a flattened metric name, e.g. `"evaluation/eval/loss"`.
        patience: rounds without improvement tolerated before stopping.
        min_delta: the smallest change that counts as an improvement.
        mode: `"min"` (lower is better) or `"max"`.

    Raises:
        ValueError: if `mode` or `patience` is invalid.

    Example:
        >>> stop = fedsim.simulation.EarlyStopping("evaluation/eval/loss", patience=3)
        >>> fedsim.simulation.run_training_process(process, select, 100, callbacks=[stop])
    """

    def __init__(self, monitor: str, patience: int = 0, min_delta: float = 0.0, mode: str = "min"):
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping mode is 'min' or 'max', got {mode!r}")
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping patience must be a non-negative int, got {patience!r}")
        self.monitor, self.patience, self.min_delta, self.mode = monitor, patience, abs(min_delta), mode
        self.best = math.inf if mode == "min" else -math.inf
        self.wait = 0
        self.seen = 0  # rounds that reported the metric
        self.stopped_round = None
        self.reason = None

    def _improved(self, value: float) -> bool:
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta

    def on_round_end(self, round_num: int, metrics: Mapping[str, Any]) -> None:
        """Counts the round and sets `stop_training` when patience runs out.

        Args:
            round_num: the round that ended.
            metrics: its flattened metrics.
        """
        if self.monitor not in metrics:
            return
        value = float(metrics[self.monitor])
        self.seen += 1
        if self._improved(value):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience and self.seen > 1:  # as keras.callbacks.EarlyStopping (never on its first value)
            self.stop_training, self.stopped_round = True, round_num
            self.reason = f"{self.monitor} did not improve on {self.best:.6g} for {self.wait} round(s)"
            logging.info("early stopping at round %d: %s", round_num, self.reason)
