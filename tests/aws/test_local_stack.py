"""The serverless server on the local stack: rounds equal the simulation; faults are handled."""

import collections
import os
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

import fedsim
from fedsim import aws
from fedsim.aws import protocol
from fedsim.aws.store import ObjectExistsError, Store

from tests.aws.helpers import SILOS, CrashingSilo, assert_close, batch, held_stream, local_datasets, simulate, start_agents


def test_rounds_with_silo_processes_equal_the_simulation(fresh, arrays, process, tmp_path):
    stack = fresh
    silo_processes = []
    for silo in SILOS:
        np.savez(tmp_path / f"{silo}.npz", **arrays[silo])
        config_path = tmp_path / f"{silo}.json"  # each silo its own credentials
        config_path.write_text(stack.silo_config(silo).to_json())
        silo_processes.append(subprocess.Popen(
            [sys.executable, "-m", "fedsim.aws.silo", "--stack-config", str(config_path), "--silo-id", silo,
             "--data", str(tmp_path / f"{silo}.npz"), "--rounds", "6", "--idle-timeout", "120"],
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=""), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        ))
    try:
        initial = process.initialize()
        expected, state = [], initial
        for _ in range(3):
            state = process.next(state, local_datasets(arrays, SILOS))
            expected.append(state)
            state = state.state
        with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=120) as context:
            serialized = []
            real_put = context.store.put_computation
            context.store.put_computation = lambda computation: serialized.append(computation) or real_put(computation)
            state = process.initialize()  # not a round: runs locally
            assert_close(initial, state)
            for round_expected in expected:
                output = process.next(state, SILOS)
                assert_close(round_expected, output)
                state = output.state
            # The server-side driver: three rounds in one execution, no call back here in between.
            final = context.run_rounds(process.next, initial, SILOS, rounds=3)
            assert len(serialized) == 8  # 7 phases + the preprocessing, serialized once for all 6 rounds
            assert_close(expected[-1], final)
            assert [r["round"] for r in context.last_report.rounds] == [1, 2, 3]
            assert all(r["aggregated"] == SILOS for r in context.last_report.rounds)
            run_id = context.last_report.run_id
        for silo_process in silo_processes:
            _, stderr = silo_process.communicate(timeout=120)
            assert silo_process.returncode == 0, stderr.decode()[-2000:]
    finally:
        for silo_process in silo_processes:
            if silo_process.poll() is None:
                silo_process.kill()
    # No object of the run was written twice (the bucket is versioned).
    s3 = stack.config.client("s3")
    versions = s3.list_object_versions(Bucket=stack.config.bucket, Prefix=f"runs/{run_id}/")["Versions"]
    keys = [v["Key"] for v in versions]
    assert len(keys) == len(set(keys)) and sum(k.endswith("result.npz") for k in keys) == 3
    # Raw data never left the silos: what they wrote is the work phase's output, nothing else.
    written = s3.list_objects_v2(Bucket=stack.config.bucket, Prefix="silos/")["Contents"]
    assert all(re.fullmatch(r"silos/[abc]/[0-9a-f]+/round-\d/work\.npz", o["Key"]) for o in written)


def test_quorum_closes_the_round_and_late_results_are_ignored(fresh, arrays, process):
    stack = fresh
    with aws.execution_context(stack, silos=SILOS, quorum=2, preprocess=batch, round_deadline_seconds=60) as context:
        _, threads, errors = start_agents(stack, arrays, ["a", "b"])
        state = process.initialize()
        output = process.next(state, SILOS)
        for thread in threads:
            thread.join(timeout=60)
        assert not errors
        assert_close(simulate(process, state, arrays, ["a", "b"]), output)
        report = context.last_report.rounds[0]
        assert report["aggregated"] == ["a", "b"]
        # Silo c comes back late. It may not read the round's result (least privilege) but may read
        # the server's closed marker, so it skips the work.
        late_agents, threads, errors = start_agents(stack, arrays, ["c"])
        threads[0].join(timeout=60)
        assert not errors and late_agents[0].outcomes == ["round already closed"]
        # A late record (a silo that missed the marker) is marked late, not aggregated.
        run_id = context.last_report.run_id
        c_store = Store(stack.silo_config("c"))
        key = protocol.silo_result_key("c", run_id, 1)
        digest = c_store.put_new(key, b"late bytes")
        record = dict(protocol.silo_item_key("c", run_id, 1), round_key=protocol.round_key(run_id, 1), key=key, sha256=digest,
                      written_at=time.time())
        assert c_store.put_item_if_absent(record)
        assert c_store.put_item_if_absent(record)  # the same write again (its answer lost): it succeeded
        assert not c_store.put_item_if_absent(dict(record, written_at=record["written_at"] + 1))  # another is refused
        verdict_key = protocol.verdict_item_key(run_id, 1, "c")
        deadline = time.time() + 20
        while (stack.handler.store.get_item(verdict_key) or {}).get("status") != "late":
            assert time.time() < deadline, "the late result was not marked"
            time.sleep(0.2)


def test_a_silo_killed_mid_round_gets_its_message_again(fresh, arrays, process):
    stack = fresh
    with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=60) as context:
        run_id, execution = context.start_rounds(process.next, process.initialize(), SILOS)
        _, crashed_threads, crashed = start_agents(stack, arrays, ["a"], agent_class=CrashingSilo)
        crashed_threads[0].join(timeout=30)
        assert crashed and "failed mid-round" in str(crashed[0][1])  # died holding the message
        _, threads, errors = start_agents(stack, arrays, SILOS)  # a restarts; b and c work normally
        status = context.wait(execution, timeout=60)
        assert status["status"] == "SUCCEEDED" and not errors


class _BadSilo(aws.SiloAgent):
    mode = None

    def work(self, request):
        good = super().work(request)
        if self.mode == "shape":
            return protocol.encode_value(np.zeros([2, 2], np.float32), fedsim.TensorType(tf.float32, [2, 2]))
        if self.mode == "nan":
            arrays = dict(np.load(__import__("io").BytesIO(good)))
            first = sorted(k for k in arrays if arrays[k].dtype.kind == "f" and arrays[k].size)[0]
            arrays[first] = np.full_like(arrays[first], np.nan)
            buffer = __import__("io").BytesIO()
            np.savez(buffer, **arrays)
            return buffer.getvalue()
        if self.mode == "oversize":
            return good + b"\0" * 4096
        return good


@pytest.mark.parametrize("mode, reason", [
    ("shape", "tensors, expected"),
    ("nan", "non-finite values"),
    ("checksum", "checksum mismatch"),
    ("oversize", "over the limit"),
])
def test_malformed_results_are_rejected_and_named(fresh, arrays, process, mode, reason):
    stack = fresh
    size_limit = 4096 if mode == "oversize" else 256 * 2**20
    with aws.execution_context(stack, silos=SILOS, quorum=2, preprocess=batch, round_deadline_seconds=60,
                               max_result_bytes=size_limit) as context:
        state = process.initialize()
        run_id, execution = context.start_rounds(process.next, state, SILOS)
        bad_agents, threads, _ = start_agents(stack, arrays, ["c"], agent_class=_BadSilo)
        bad_agents[0].mode = mode
        if mode == "checksum":
            real_put = bad_agents[0].store.put_new
            bad_agents[0].store.put_new = lambda key, data, sha256=None: (real_put(key, data), "0" * 64)[1]
        start_agents(stack, arrays, ["a"])
        deadline = time.time() + 60
        while context.store.round_verdicts(run_id, 1).get("c", {}).get("status") != "rejected":
            assert time.time() < deadline, "c's result was not rejected"
            time.sleep(0.1)
        start_agents(stack, arrays, ["b"])  # the second valid result completes the quorum
        output = context.finish(process.next, run_id, execution)
        rejected = context.last_report.rounds[0]["rejected"]
        assert list(rejected) == ["c"] and reason in rejected["c"], rejected
        assert context.last_report.rounds[0]["aggregated"] == ["a", "b"]
        assert_close(simulate(process, state, arrays, ["a", "b"]), output)


def test_a_round_that_cannot_reach_quorum_fails_with_the_reasons(fresh, arrays, process):
    stack = fresh
    with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=60) as context:
        start_agents(stack, arrays, ["a", "b"])
        bad_agents, _, _ = start_agents(stack, arrays, ["c"], agent_class=_BadSilo)
        bad_agents[0].mode = "nan"
        with pytest.raises(aws.RoundFailedError, match=r"round 1: \d valid result\(s\), quorum 3; rejected: c: .*non-finite"):
            process.next(process.initialize(), SILOS)
        assert context.last_report.rounds[0]["status"] == "failed"


def test_aggregation_fired_twice_aggregates_once(fresh, arrays, process):
    stack = fresh
    with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=60) as context:
        with held_stream(stack) as held:
            run_id, execution = context.start_rounds(process.next, process.initialize(), SILOS)
            _, threads, errors = start_agents(stack, arrays, SILOS)
            deadline = time.time() + 60
            def this_run_results():  # the stream may still carry records of earlier tests' runs
                images = [r["dynamodb"]["NewImage"] for r in held if r["eventName"] == "INSERT"]
                return {i["pk"]["S"] for i in images if i.get("round_key", {}).get("S") == protocol.round_key(run_id, 1)}

            while this_run_results() != set(SILOS):
                assert time.time() < deadline and not errors, errors
                time.sleep(0.1)
            event = {"Records": list(held)}
        outcomes = []
        handlers = [aws.AggregationHandler(stack.config) for _ in range(2)]
        firing = [threading.Thread(target=lambda h=h: outcomes.extend(h.handle(event))) for h in handlers]
        for thread in firing:
            thread.start()
        for thread in firing:
            thread.join(timeout=60)
        assert outcomes.count("aggregated") == 1, outcomes
        assert context.wait(execution, timeout=60)["status"] == "SUCCEEDED"
        s3 = stack.config.client("s3")
        versions = s3.list_object_versions(Bucket=stack.config.bucket, Prefix=f"runs/{run_id}/round-1/result.npz")["Versions"]
        assert len(versions) == 1
        with pytest.raises(ObjectExistsError, match="never overwritten"):
            context.store.put_new(f"runs/{run_id}/round-1/result.npz", b"a later write")


def test_a_round_past_its_deadline_fails_clearly(fresh, arrays, process):
    stack = fresh
    with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=8):
        start_agents(stack, arrays, ["a", "b"])
        started = time.time()
        with pytest.raises(aws.RoundFailedError, match=r"round 1 \(status: open\) missed its deadline of 8s: 2 of 3 silos reported \(missing: c\)"):
            process.next(process.initialize(), SILOS)
        assert time.time() - started < 30


def test_the_state_machine_stops_on_a_metric_threshold(fresh, arrays, process):
    stack = fresh
    with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=60) as context:
        agents, _, _ = start_agents(stack, arrays, SILOS, rounds=5)
        # Stop when the training loss is below 1e6: at once, so the run stops after round 1 of 5.
        output = context.run_rounds(process.next, process.initialize(), SILOS, rounds=5,
                                    stop_rules=[aws.StopWhen("training/client_work/train/loss", below=1e6)])
        assert [r["round"] for r in context.last_report.rounds] == [1]
        loss = float(output.metrics["client_work"]["train"]["loss"])
        assert context.last_report.rounds[0]["metrics"]["training/client_work/train/loss"] == pytest.approx(loss)
        assert context.last_run.stop_reason == f"training/client_work/train/loss = {loss:.6g} < 1e+06 at round 1"
        for agent in agents:
            agent.stop()


def test_the_handler_keeps_the_privacy_ledger_and_stops_before_the_budget_is_exceeded(fresh, arrays):
    """Three silos in every round (no amplification): epsilon after round r is dp-accounting's for
    r Gaussian mechanisms; a budget with room for two rounds ends the run after round 2."""
    import dp_accounting

    from fedsim import aggregators, learning
    from fedsim.learning import optimizers
    from tests.aws.helpers import model_fn

    z, delta = 2.0, 1e-5
    factory = aggregators.DifferentiallyPrivateFactory.gaussian_fixed(noise_multiplier=z, clients_per_round=3, clip=1.0, noise_seed=3)
    dp_process = learning.build_unweighted_fed_avg(model_fn, lambda: optimizers.build_sgdm(0.1), model_aggregator=factory)

    def reference(rounds):
        accountant = dp_accounting.pld.PLDAccountant()
        accountant.compose(dp_accounting.GaussianDpEvent(z), rounds)
        return accountant.get_epsilon(delta)

    budget = aggregators.PrivacyBudget(epsilon=(reference(2) + reference(3)) / 2, delta=delta)
    ledger = aggregators.PrivacyLedger(budget=budget)
    stack = fresh
    with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=60) as context:
        agents, _, _ = start_agents(stack, arrays, SILOS, rounds=5)
        context.run_rounds(dp_process, dp_process.initialize(), SILOS, rounds=5, privacy_ledger=ledger)
        lineage = context.last_run
        for agent in agents:
            agent.stop()
    assert [r["round"] for r in lineage.rounds] == [1, 2]
    assert [r["metrics"]["privacy/epsilon"] for r in lineage.rounds] == pytest.approx([reference(1), reference(2)], abs=1e-9)
    assert lineage.stop_reason.startswith("privacy budget: round 3 would take epsilon")
    assert ledger.stop_reason == lineage.stop_reason and ledger.epsilon() == pytest.approx(reference(2), abs=1e-9)


def test_with_local_dp_what_the_server_can_read_of_a_silo_is_already_noised(fresh, arrays):
    """Reads each silo's upload as the server reads it: the model update in it is far outside the
    clip ball (the noise was added on the silo), with about the stated spread, and no two silos'
    noise is alike."""
    from fedsim import aggregators, learning
    from fedsim.core import compiler
    from fedsim.learning import optimizers
    from tests.aws.helpers import model_fn

    z, clip = 10.0, 0.01
    local = aggregators.local_gaussian_factory(z, clip, aggregators.UnweightedMeanFactory())
    dp_process = learning.build_unweighted_fed_avg(model_fn, lambda: optimizers.build_sgdm(0.1), model_aggregator=local)
    stack = fresh
    with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=60) as context:
        agents, threads, errors = start_agents(stack, arrays, SILOS, rounds=1)
        context.run_rounds(dp_process, dp_process.initialize(), SILOS, rounds=1)
        run_id = context.last_run.run_id
    for thread in threads:
        thread.join(30)
    assert not errors
    form = compiler.compile_to_canonical_form(dp_process.next)
    updates = []
    for silo in SILOS:
        data = context.store.get(protocol.silo_result_key(silo, run_id, "1"))[0]
        uploaded = protocol.decode_value(data, form.client_output_type, f"{silo}'s upload")
        elements = fedsim.core.structure.struct_elements(uploaded, form.client_output_type)
        # the model update: the element shaped as the model's trainable weights (kernel 5x3, bias 3)
        update = next(np.concatenate([np.ravel(leaf) for leaf in tf.nest.flatten(element)]) for element in elements
                      if [np.shape(leaf) for leaf in tf.nest.flatten(element)] == [(5, 3), (3,)])
        updates.append(update)
        assert np.linalg.norm(update) > 10 * clip  # a clipped update without noise has norm <= clip
        assert np.std(update) == pytest.approx(z * clip, rel=0.5)  # 18 coordinates: a loose check of the spread
    assert all(np.abs(a - b).min() > 0 for i, a in enumerate(updates) for b in updates[i + 1:])


def test_local_stack_command_line_serves_and_stops(tmp_path):
    config_path = tmp_path / "stack.json"
    server = subprocess.Popen([sys.executable, "-m", "fedsim.aws.local", "--silos", "x,y", "--config-out", str(config_path)],
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not config_path.exists():
            assert server.poll() is None and time.time() < deadline, server.communicate()[1].decode()[-2000:]
            time.sleep(0.2)
        time.sleep(0.5)
        config = aws.StackConfig.from_json(config_path.read_text())
        assert sorted(config.silo_queues) == ["x", "y"]
        port = int(config.endpoint_url.rsplit(":", 1)[1])
        assert config.client("sqs").list_queues()["QueueUrls"]
    finally:
        server.send_signal(__import__("signal").SIGINT)
        server.communicate(timeout=60)
    with __import__("socket").socket() as probe:  # the moto server it started is gone: nothing listens there
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_a_silo_whose_data_does_not_fit_reports_why_and_the_round_fails_at_once(fresh, arrays, process):
    stack = fresh
    wrong = {"c": collections.OrderedDict(x=np.zeros([4, 7], np.float32), y=np.zeros([4], np.int32))}
    with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=300) as context:
        start_agents(stack, arrays, ["a", "b"])
        start_agents(stack, wrong, ["c"])
        with pytest.raises(aws.RoundFailedError,
                           match=r"(?s)rejected: c: .*silo c's data does not fit the round's computation.*at \*.x: expected float32\[5\], given float32\[7\]"):
            process.next(process.initialize(), SILOS)
        assert context.last_report.rounds[0]["status"] == "failed"


def test_silos_not_started_fail_the_round_early_and_say_so(fresh, process):
    stack = fresh
    with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=300, pickup_timeout_seconds=2):
        with pytest.raises(aws.RoundFailedError, match=r"round 1: no silo took the round's message within 2s .*are the silo agents running"):
            process.next(process.initialize(), SILOS)
