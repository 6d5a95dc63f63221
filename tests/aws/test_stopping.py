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


def _keras_stop_epoch(values, patience, mode, min_delta):
    """The epoch (0-based) at which keras.callbacks.EarlyStopping stops on these values, or None."""
    import keras

    class Holder:
        stop_training = False

    callback = keras.callbacks.EarlyStopping(monitor="m", patience=patience, mode=mode, min_delta=min_delta)
    holder = Holder()
    callback.set_model(holder)
    callback.on_train_begin()
    for epoch, value in enumerate(values):
        callback.on_epoch_end(epoch, {"m": value})
        if holder.stop_training:
            return epoch
    return None


HISTORIES = [
    [0.9, 0.5, 0.6, 0.55, 0.4, 0.45, 0.46, 0.47, 0.3],
    [0.9, 0.8, 0.7, 0.6],
    [0.5, 0.5, 0.5, 0.5, 0.5],
    [0.5, 0.4, 0.41, 0.395, 0.399, 0.398, 0.2],
    [1.0, 2.0, 3.0, 2.5, 4.0, 3.9, 3.8, 3.7],
]


@pytest.mark.parametrize("patience", [0, 1, 2, 3])
@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("min_delta", [0.0, 0.02])
def test_no_improvement_stops_where_keras_early_stopping_stops(patience, mode, min_delta):
    for values in HISTORIES:
        expected = _keras_stop_epoch(values, patience, mode, min_delta)
        rule = stopping.StopWhenNoImprovement("m", patience=patience, mode=mode, min_delta=min_delta)
        ours = next((n for n in range(1, len(values) + 1) if rule.reason(history(values[:n], "m"))), None)
        assert ours == (None if expected is None else expected + 1), (values, expected, ours)  # rounds count from 1


def test_rounds_without_the_metric_are_not_counted():
    rule = stopping.StopWhenNoImprovement(LOSS, patience=1)
    assert rule.reason(history([0.9, None, 0.8, None, 0.7])) is None
    assert rule.reason(history([0.9, 0.5, None, 0.6])).endswith("(round 4)")


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
