"""A serverless run as an auditable record: evaluation on held-out data every round, a stopping
rule, the lineage (exported, unchangeable by a silo), a model to serve, and the metrics history.

Silo c is late on purpose in every step (it uploads only after the step has closed, quorum 2),
so each step aggregates a and b; the local simulation of the same steps is the reference.
"""

import collections
import csv
import io
import json
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import fedsim
from fedsim import aws, learning, simulation
from fedsim.aws import protocol
from fedsim.aws.store import Store
from fedsim.core import context_stack
from fedsim.learning import optimizers
from tests.aws.helpers import SILOS, assert_close, batch, model_fn

EVAL_LOSS = "evaluation/client_work/eval/current_round_metrics/loss"
ROUNDS = 4


class LateSilo(aws.SiloAgent):
    """Does its work, but uploads only once the step has closed without it."""

    def __init__(self, *args, watch: Store, **kwargs):
        super().__init__(*args, **kwargs)
        self.watch = watch

    def work(self, request):
        output = super().work(request)
        key = protocol.round_item_key(request["run_id"], str(request["round"]))
        deadline = time.monotonic() + 60
        while (self.watch.get_item(key) or {}).get("status") == "open" and time.monotonic() < deadline:
            time.sleep(0.1)
        return output


def silo_data(seed):
    rng = np.random.RandomState(seed)
    def arrays(n):
        return collections.OrderedDict(x=rng.randn(n, 5).astype(np.float32), y=rng.randint(0, 3, n).astype(np.int32))
    return {s: {"train": arrays(12), "test": arrays(8)} for s in SILOS}


def batched(arrays):
    return tf.data.Dataset.from_tensor_slices(arrays).batch(4)


def simulate_run(process, evaluation, state, data, cohort, rounds):
    """The same rounds in the local context: train on the cohort, then evaluate the new model on its test data."""
    history, outputs = [], []
    with context_stack.execution_context(fedsim.LocalExecutionContext()):
        evaluation_state = evaluation.initialize()
        for round_num in range(1, rounds + 1):
            output = process.next(state, [batched(data[s]["train"]) for s in cohort])
            state = output.state
            evaluation_state = evaluation.set_model_weights(evaluation_state, process.get_model_weights(state))
            evaluated = evaluation.next(evaluation_state, [batched(data[s]["test"]) for s in cohort])
            evaluation_state = evaluated.state
            metrics = simulation.metrics_managers.flatten_metrics({"training": output.metrics, "evaluation": evaluated.metrics})
            history.append((round_num, metrics))
            outputs.append(output)
    return history, outputs


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = silo_data(3)
    process = learning.algorithms.build_weighted_fed_avg(model_fn, lambda: optimizers.build_sgdm(0.1))
    evaluation = learning.algorithms.build_fed_eval(model_fn)
    initial = process.initialize()
    expected_history, expected_outputs = simulate_run(process, evaluation, initial, data, ["a", "b"], ROUNDS)
    losses = [metrics[EVAL_LOSS] for _, metrics in expected_history]
    assert losses[2] < min(losses[:2]), losses  # so that the rule below fires at round 3, not before
    threshold = (min(losses[:2]) + losses[2]) / 2
    with aws.LocalStack(SILOS) as stack:
        watch = Store(stack.config)
        agents, threads = [], []
        for silo in SILOS:
            datasets = {name: tf.data.Dataset.from_tensor_slices(arrays) for name, arrays in data[silo].items()}
            if silo == "c":
                agent = LateSilo(stack.silo_config(silo), silo, datasets, watch=watch)
            else:
                agent = aws.SiloAgent(stack.silo_config(silo), silo, datasets)
            thread = threading.Thread(target=agent.run, kwargs=dict(stop_after_rounds=6, idle_timeout=90), daemon=True)
            thread.start()
            agents.append(agent)
            threads.append(thread)
        history_callback = simulation.History()
        csv_path = tmp_path_factory.mktemp("metrics") / "metrics.csv"
        with aws.execution_context(stack, silos=SILOS, quorum=2, preprocess=batch, round_deadline_seconds=120) as context:
            output = context.run_rounds(
                process, initial, SILOS, rounds=ROUNDS, evaluation=evaluation, evaluate_every=1,
                stop_rules=[aws.StopWhen(EVAL_LOSS, below=threshold)],
                callbacks=[history_callback], metrics_managers=[simulation.CSVMetricsManager(str(csv_path))])
            hashes = context.silo_computation_hashes(process, evaluation)
        for thread in threads:
            thread.join(timeout=120)  # c's late results of the last steps are judged too
        yield dict(stack=stack, context=context, output=output, expected_history=expected_history,
                   expected_outputs=expected_outputs, threshold=threshold, hashes=hashes, process=process,
                   evaluation=evaluation, history_callback=history_callback, csv_path=csv_path, data=data)


def assert_metrics_close(expected: dict, got: dict):
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-6, abs=1e-6), name


def test_evaluation_every_round_and_the_stop_rule_equal_the_simulation(run):
    lineage = run["context"].last_run
    assert [r["round"] for r in lineage.rounds] == [1, 2, 3]  # 4 rounds asked, stopped at 3
    assert lineage.stop_reason.startswith(f"{EVAL_LOSS} = ") and lineage.stop_reason.endswith(f"< {run['threshold']:g} at round 3")
    for (round_num, expected), record in zip(run["expected_history"], lineage.rounds):
        assert record["round"] == round_num
        assert_metrics_close(expected, record["metrics"])
        assert any(name.startswith("evaluation/") for name in record["metrics"])
    assert_close(run["expected_outputs"][2], run["output"])  # the call returns round 3's result
    callback = run["history_callback"]
    assert callback.rounds == [1, 2, 3]
    assert callback.history[EVAL_LOSS] == pytest.approx([m[EVAL_LOSS] for _, m in run["expected_history"][:3]], rel=1e-6)
    with open(run["csv_path"]) as stream:
        rows = list(csv.DictReader(stream))
    assert [int(r["round_num"]) for r in rows] == [1, 2, 3]


def test_lineage_names_models_computations_contributors_and_the_late_silo(run):
    stack = run["stack"]
    lineage = aws.read_lineage(stack.config, run["context"].last_run.run_id)
    assert lineage.computations["training_work"] == run["hashes"]["work"]
    assert lineage.computations["evaluation_work"] == run["hashes"]["evaluation_work"]
    s3 = stack.config.client("s3")
    for phase, digest in lineage.computations.items():
        body = s3.get_object(Bucket=stack.config.bucket, Key=protocol.computation_key(digest))["Body"].read()
        assert protocol.sha256(body) == digest, phase
    for record, expected in zip(lineage.rounds, run["expected_outputs"]):
        assert record["contributors"] == ["a", "b"] and record["late"] == ["c"] and record["rejected"] == {}
        assert record["evaluation"]["contributors"] == ["a", "b"] and record["evaluation"]["late"] == ["c"]
        model = record["model"]
        stored = s3.get_object(Bucket=stack.config.bucket, Key=model["key"], VersionId=model["version_id"])["Body"].read()
        assert protocol.sha256(stored) == model["sha256"]
        weights = aws.fetch_global_model(stack.config, lineage.run_id, record["round"])
        assert_close(run["process"].get_model_weights(expected.state), weights)
    exported = json.loads(lineage.to_json())
    assert [r["round"] for r in exported["rounds"]] == [1, 2, 3] and exported["stop_reason"] == lineage.stop_reason
    rows = list(csv.DictReader(io.StringIO(lineage.to_csv())))
    assert [(r["round"], r["contributors"], r["late"]) for r in rows] == [("1", "a b", "c"), ("2", "a b", "c"), ("3", "a b", "c")]
    assert float(rows[2][EVAL_LOSS]) == pytest.approx(run["expected_history"][2][1][EVAL_LOSS], rel=1e-6)


def test_a_silo_cannot_rewrite_the_lineage(run):
    stack = run["stack"]
    run_id = run["context"].last_run.run_id
    before = aws.read_lineage(stack.config, run_id).to_json()
    silo_store = Store(stack.silo_config("c"))  # c rewrites its own record of round 2 (its role allows that)
    record = dict(protocol.silo_item_key("c", run_id, 2), round_key=protocol.round_key(run_id, 2),
                  key=protocol.silo_result_key("c", run_id, 2), sha256="0" * 64, size=1, work_seconds=0.0, written_at=0.0)
    silo_store.dynamodb.put_item(TableName=stack.config.table, Item=fedsim.aws.store._marshal(record))
    time.sleep(1.0)  # the stream loop hands the rewritten record to the handler, which judges it again
    assert aws.read_lineage(stack.config, run_id).to_json() == before


def test_the_exported_model_serves_the_same_predictions(run, tmp_path):
    stack = run["stack"]
    run_id = run["context"].last_run.run_id
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    keys = aws.export_model(stack.config, run_id, model)
    s3 = stack.config.client("s3")
    for name, key in keys.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        response = s3.get_object(Bucket=stack.config.bucket, Key=key)
        path.write_bytes(response["Body"].read())
        assert response["Metadata"]["run-id"] == run_id and response["Metadata"]["round"] == "3"
    card = json.loads((tmp_path / "model_card.json").read_text())
    assert card["run_id"] == run_id and card["round"] == 3
    weights = run["process"].get_model_weights(run["expected_outputs"][2].state)  # the simulation's round-3 model
    kernel, bias = (np.asarray(w) for w in weights.trainable)
    x = run["data"]["a"]["test"]["x"]
    expected = x @ kernel + bias
    loaded = keras.models.load_model(tmp_path / "global_model.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-5)
    served = tf.saved_model.load(str(tmp_path / "saved_model"))
    np.testing.assert_allclose(served.serve(tf.constant(x)).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_a_silo_without_the_named_dataset_fails_the_step_with_its_reason(run):
    stack = run["stack"]
    process, evaluation = run["process"], run["evaluation"]
    data = run["data"]
    agents = [aws.SiloAgent(stack.silo_config(s), s, {"train": tf.data.Dataset.from_tensor_slices(data[s]["train"])}) for s in SILOS]
    threads = [threading.Thread(target=a.run, kwargs=dict(stop_after_rounds=2, idle_timeout=60), daemon=True) for a in agents]
    for thread in threads:
        thread.start()
    with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=120) as context:
        started = time.monotonic()
        # whichever silo's refusal is judged first fails the step (they race): its own reason, named
        with pytest.raises(aws.RoundFailedError, match=r"(?P<silo>[abc]): the silo refused the round: silo (?P=silo) has no "
                                                       r"dataset named 'holdout' \(it has: train\)"):
            context.run_rounds(process, process.initialize(), SILOS, rounds=2, evaluation=evaluation, eval_dataset="holdout")
        assert time.monotonic() - started < 60  # at once, not at the deadline
    for thread in threads:
        thread.join(timeout=30)


def test_a_federated_evaluation_computation_as_the_evaluation(run):
    """`build_federated_evaluation`'s computation (no process state) evaluates each round's model too."""
    stack, process, data = run["stack"], run["process"], run["data"]
    evaluate = learning.build_federated_evaluation(model_fn)
    initial = process.initialize()
    expected = []
    with context_stack.execution_context(fedsim.LocalExecutionContext()):
        state = initial
        for round_num in (1, 2):
            state = process.next(state, [batched(data[s]["train"]) for s in SILOS]).state
            metrics = evaluate(process.get_model_weights(state), [batched(data[s]["test"]) for s in SILOS])
            expected.append(simulation.metrics_managers.flatten_metrics({"evaluation": metrics}))
    agents = [aws.SiloAgent(stack.silo_config(s), s, {n: tf.data.Dataset.from_tensor_slices(a) for n, a in data[s].items()})
              for s in SILOS]
    threads = [threading.Thread(target=a.run, kwargs=dict(stop_after_rounds=4, idle_timeout=60), daemon=True) for a in agents]
    for thread in threads:
        thread.start()
    with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=120) as context:
        context.run_rounds(process, initial, SILOS, rounds=2, evaluation=evaluate)
        hashes = context.silo_computation_hashes(process, evaluate)
    for thread in threads:
        thread.join(timeout=30)
    lineage = context.last_run
    assert lineage.computations["evaluation_work"] == hashes["evaluation_work"]
    assert lineage.stop_reason == "all 2 rounds done"
    for record, wanted in zip(lineage.rounds, expected):
        assert_metrics_close(wanted, {k: v for k, v in record["metrics"].items() if k.startswith("evaluation/")})
        assert record["evaluation"]["contributors"] == SILOS
