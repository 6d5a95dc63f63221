"""Stopping rules of a serverless run: thresholds, no improvement (Keras' rule), and their JSON form."""

import pytest

from fedsim.aws import stopping

LOSS = "evaluation/client_work/eval/current_round_metrics/loss"


def history(values, metric=LOSS):
    return [(r, {} if v is None else {metric: v}) for r, v in enumerate(values, start=1)]


def test_thresholds_look_at_the_round_just_finished():
    rule = stopping.StopWhen(LOSS, below=0.5)
    assert rule.reason(history([0.9, 0.7])) is None
    assert rule.reason(history([0.9, 0.4])) == f"{LOSS} = 0.4 < 0.5 at round 2"
    assert rule.reason(history([0.4, None])) is None  # round 2 was not evaluated: nothing to judge
    assert stopping.StopWhen("acc", above=0.8).reason(history([0.5, 0.85], "acc")) == "acc = 0.85 > 0.8 at round 2"
    with pytest.raises(ValueError, match="needs a threshold"):
        stopping.StopWhen(LOSS)


def test_no_improvement_is_keras_early_stopping():
    rule = stopping.StopWhenNoImprovement(LOSS, patience=1)
    # best 0.5 at round 2; rounds 3 and 4 do not improve on it: the second miss stops (patience 1)
    assert rule.reason(history([0.9, 0.5, 0.6])) is None
    assert rule.reason(history([0.9, 0.5, 0.6, 0.55])).endswith("(round 4)")
    assert stopping.StopWhenNoImprovement("acc", patience=0, mode="max").reason(history([0.5, 0.4], "acc")) is not None
    assert rule.reason(history([0.9, None, 0.8, None, 0.7])) is None  # rounds without the metric are not counted


def test_rules_travel_as_json_and_bad_rules_are_named():
    rules = [stopping.StopWhen(LOSS, below=0.1), stopping.StopWhenNoImprovement("acc", patience=2, mode="max", min_delta=0.01)]
    assert [stopping.rule_from_json(r.to_json()) for r in rules] == rules
    assert stopping.first_stop_reason(rules, history([0.05])) == f"{LOSS} = 0.05 < 0.1 at round 1"
    assert stopping.first_stop_reason(rules, history([0.5])) is None
    for document, message in [
        ({"rule": "threshold", "metric": LOSS, "below": "low"}, "below must be a finite number"),
        ({"rule": "no_improvement", "metric": LOSS, "patience": -1}, "patience must be a non-negative int"),
        ({"rule": "no_improvement", "metric": LOSS, "mode": "sideways"}, "mode is 'min' or 'max'"),
        ({"rule": "eval", "metric": LOSS}, "unknown stopping rule 'eval'"),
        (["not", "a", "rule"], "an object with a metric name"),
    ]:
        with pytest.raises(ValueError, match=message):
            stopping.rule_from_json(document)
