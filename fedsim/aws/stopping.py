"""Stopping rules of a serverless run: judged by the aggregation handler after every round.

A rule looks at the run's metric history, `[(round_num, {name: value}), ...]` with the names
`run_training_process` gives (`training/client_work/train/loss`,
`evaluation/client_work/eval/current_round_metrics/loss`, ...), and returns the reason to stop,
or None. Rules travel in the run's manifest as JSON (`to_json` / `rule_from_json`).

Example::

    context.run_rounds(process, state, silos, rounds=50, evaluation=fed_eval, stop_rules=[
        StopWhen("evaluation/client_work/eval/current_round_metrics/sparse_categorical_accuracy", above=0.9),
        StopWhenNoImprovement("evaluation/client_work/eval/current_round_metrics/loss", patience=3),
    ])
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import attrs

from fedsim.simulation.callbacks import EarlyStopping

__all__ = ["StopWhen", "StopWhenNoImprovement", "first_stop_reason", "rule_from_json"]


@attrs.frozen
class StopWhen:
    """Stop once `metric`, in the round just finished, is below `below` or above `above`.

    Args:
        metric: a flattened metric name, e.g. `"client_work/train/loss"`.
        below: stop when the metric is below this.
        above: stop when the metric is above this.

    Raises:
        ValueError: if neither threshold is given.

    Example:
        >>> context.run_rounds(process.next, state, silo_ids, rounds=50,
        ...                    stop_rules=[fedsim.aws.StopWhen("client_work/train/loss", below=0.1)])
    """

    metric: str
    below: Optional[float] = None
    above: Optional[float] = None

    def __attrs_post_init__(self) -> None:
        if self.below is None and self.above is None:
            raise ValueError(f"StopWhen({self.metric!r}) needs a threshold: below=... or above=...")

    def reason(self, history: Sequence[tuple]) -> Optional[str]:
        """Why the run should stop after the last round of `history`, or None to go on.

        Args:
            history: `(round, metrics)` pairs, oldest first; metrics flattened (`a/b`), None where absent.

        Returns:
            The reason, in words naming the metric and round, or None.
        """
        if not history or self.metric not in history[-1][1] or history[-1][1][self.metric] is None:
            return None
        value = float(history[-1][1][self.metric])
        if self.below is not None and value < self.below:
            return f"{self.metric} = {value:.6g} < {self.below:g} at round {history[-1][0]}"
        if self.above is not None and value > self.above:
            return f"{self.metric} = {value:.6g} > {self.above:g} at round {history[-1][0]}"
        return None

    def to_json(self) -> dict:
        """The rule as the manifest records it (read back by `rule_from_json`)."""
        return {"rule": "threshold", "metric": self.metric, "below": self.below, "above": self.above}


@attrs.frozen
class StopWhenNoImprovement:
    """Stop when `metric` has not improved by `min_delta` for `patience` rounds (Keras' EarlyStopping rule).

    Args:
        metric: a flattened metric name.
        patience: rounds without improvement tolerated.
        mode: `"min"` or `"max"`.
        min_delta: the smallest change that counts as an improvement.
    """

    metric: str
    patience: int = 0
    mode: str = "min"
    min_delta: float = 0.0

    def reason(self, history: Sequence[tuple]) -> Optional[str]:
        """Why the run should stop after the last round of `history`, or None to go on.

        Args:
            history: `(round, metrics)` pairs, oldest first; metrics flattened (`a/b`), None where absent.

        Returns:
            The reason, in words naming the metric and round, or None.
        """
        watcher = EarlyStopping(self.metric, patience=self.patience, min_delta=self.min_delta, mode=self.mode)
        for round_num, metrics in history:
            watcher.on_round_end(round_num, {k: v for k, v in metrics.items() if v is not None})
            if watcher.stop_training:
                return f"{watcher.reason} (round {round_num})"
        return None

    def to_json(self) -> dict:
        """The rule as the manifest records it (read back by `rule_from_json`)."""
        return {"rule": "no_improvement", "metric": self.metric, "patience": self.patience, "mode": self.mode,
                "min_delta": self.min_delta}


def rule_from_json(document: Any) -> Any:
    """A rule from the manifest; ValueError names what is wrong with it."""
    if not isinstance(document, dict) or not isinstance(document.get("metric"), str):
        raise ValueError(f"a stopping rule is an object with a metric name, got {str(document)[:200]}")

    def number(name: str) -> Optional[float]:
        value = document.get(name)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)):
            raise ValueError(f"stopping rule on {document['metric']!r}: {name} must be a finite number, got {value!r}")
        return value

    if document.get("rule") == "threshold":
        return StopWhen(document["metric"], below=number("below"), above=number("above"))
    if document.get("rule") == "no_improvement":
        patience = document.get("patience", 0)
        if not isinstance(patience, int) or isinstance(patience, bool) or patience < 0:
            raise ValueError(f"stopping rule on {document['metric']!r}: patience must be a non-negative int, got {patience!r}")
        mode = document.get("mode", "min")
        if mode not in ("min", "max"):
            raise ValueError(f"stopping rule on {document['metric']!r}: mode is 'min' or 'max', got {mode!r}")
        return StopWhenNoImprovement(document["metric"], patience=patience, mode=mode, min_delta=number("min_delta") or 0.0)
    raise ValueError(f"unknown stopping rule {str(document.get('rule'))[:50]!r} (known: threshold, no_improvement)")


def first_stop_reason(rules: Sequence[Any], history: Sequence[tuple]) -> Optional[str]:
    """The first rule's reason to stop after the last round of `history`, or None to go on."""
    for rule in rules:
        reason = rule.reason(history)
        if reason is not None:
            return reason
    return None
