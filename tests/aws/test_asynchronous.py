"""Asynchronous (FedBuff) runs on the local stack: equal to synchronous FedAvg when they should
be, each update applied once whatever the stream and the handlers do, stale updates refused,
a silo that dies does not stop the run.

References are independent of the asynchronous server: synchronous FedAvg in the local
simulation context over the silos a version applied.
"""

import collections
import contextlib
import csv
import io
import json
import subprocess
import sys
import threading
import time

import pytest

from fedsim import aggregators, aws, learning
from fedsim.aws import asynchronous, protocol
from fedsim.aws.lease import LEASE_SECONDS
from fedsim.aws.store import TransientStoreError
from fedsim.core.staleness import AsyncUnsupportedError, constant_staleness
from fedsim.learning import optimizers
from tests.aws.helpers import SILOS, SiloKilled, assert_close, batch, held_stream, local_datasets, model_fn, simulate, start_agents


def _wait_for(condition, what, timeout=60):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, what
        time.sleep(0.05)


def _applied_ids(lineage):
    return [f"{u['step']}/{u['silo']}" for r in lineage.rounds for u in r.get("updates", [])]


@contextlib.contextmanager
def _run_with_held_first_updates(stack, context, process, state, **options):
    """Starts an asynchronous run with the stream held until the three silos' updates from
    version 0 are in; yields `(run_id, execution, their stream event)` for the test to deliver;
    on leaving, delivers what the stream held meanwhile and lets it flow again."""
    with held_stream(stack) as held:
        run_id, execution = context.start_async(process, state, SILOS, deadline_seconds=300, **options)
        round_key = protocol.round_key(run_id, "1")

        def first_updates():
            return [r for r in held if r["eventName"] == "INSERT"
                    and r["dynamodb"]["NewImage"].get("round_key", {}).get("S") == round_key]

        _wait_for(lambda: len({r["dynamodb"]["NewImage"]["pk"]["S"] for r in first_updates()}) == len(SILOS),
                  "the silos' first updates were not held")
        yield run_id, execution, {"Records": first_updates()}
        held_later = list(held)
    stack.deliver_records(held_later)


def test_with_k_equal_to_the_cohort_an_asynchronous_run_is_synchronous_fedavg(fresh, arrays, process):
    stack = fresh
    state = process.initialize()
    expected = []
    for _ in range(3):
        output = process.next(state, local_datasets(arrays, SILOS))
        expected.append(output)
        state = output.state
    agents, threads, errors = start_agents(stack, arrays, SILOS)
    history = _Recorder()
    with aws.execution_context(stack, silos=SILOS, preprocess=batch) as context:
        output = context.run_async(process, process.initialize(), SILOS, total_versions=3, buffer_size=3,
                                   staleness_weight=constant_staleness(), deadline_seconds=300, callbacks=[history])
        lineage = context.last_run
    for thread in threads:
        thread.join(30)
    assert not errors
    assert_close(expected[-1], output)
    for record, reference in zip(lineage.rounds, expected):  # every version equals the round, not only the last
        assert_close(reference.state.global_model_weights, aws.fetch_global_model(stack.config, lineage.run_id, record["round"]))
        assert sorted(u["silo"] for u in record["updates"]) == SILOS
        assert {u["staleness"] for u in record["updates"]} == {0} and record["refused"] == []
    assert lineage.stop_reason == "all 3 versions published"
    assert [round_num for round_num, _ in history.history] == [1, 2, 3]
    assert history.history[-1][1]["async/updates"] == 3.0
    assert [agent.outcomes[-1] for agent in agents] == ["asynchronous run over (3 updates)"] * 3
    rows = list(csv.DictReader(io.StringIO(lineage.to_csv())))
    assert sorted(rows[0]["updates"].split()) == [f"{s}@0:1" for s in SILOS]


class _Recorder:
    """A callback that keeps what it is given (as `simulation.History` does)."""

    def __init__(self):
        self.history = []

    def on_round_end(self, round_num, metrics):
        self.history.append((round_num, dict(metrics)))


def test_each_update_is_applied_once_under_duplicate_and_concurrent_deliveries(fresh, arrays, process):
    """The first updates are delivered three times, twice at once by two handlers; version 1
    still holds K of them, the third is applied once (stale) in a later version."""
    stack = fresh
    agents, threads, errors = start_agents(stack, arrays, SILOS)
    with aws.execution_context(stack, silos=SILOS, preprocess=batch) as context:
        state = process.initialize()
        with _run_with_held_first_updates(stack, context, process, state, total_versions=4, buffer_size=2,
                                          staleness_weight=constant_staleness()) as (run_id, execution, event):
            handlers = [aws.AggregationHandler(stack.config, lease_seconds=2.0) for _ in range(2)]
            outcomes = []
            racing = [threading.Thread(target=lambda h=h: outcomes.append(h.handle(event))) for h in handlers]
            for thread in racing:
                thread.start()
            for thread in racing:
                thread.join(120)
            outcomes.append(aws.AggregationHandler(stack.config).handle(event))  # a duplicate delivery
        context.finish(process.next, run_id, execution, timeout=300)
        lineage = context.last_run
    for thread in threads:
        thread.join(30)
    assert not errors
    published = [int(o.split()[1]) for outcome in outcomes for o in outcome if o.startswith("published")]
    assert published == [1]  # one of the three deliveries published version 1; the others found it done
    applied = _applied_ids(lineage)
    assert len(applied) == len(set(applied)) == 4 * 2  # K per version, none twice
    first = lineage.rounds[0]["updates"]
    assert len(first) == 2 and {u["staleness"] for u in first} == {0}
    third = ({f"1/{s}" for s in SILOS} - {f"1/{u['silo']}" for u in first}).pop()
    assert applied.count(third) == 1 and third not in {f"1/{u['silo']}" for u in first}
    # version 1 is FedAvg over its two updates (constant weight, staleness 0): an independent reference
    version_1_silos = sorted(u["silo"] for u in first)
    assert_close(simulate(process, state, arrays, version_1_silos).state.global_model_weights,
                 aws.fetch_global_model(stack.config, run_id, 1))
    s3 = stack.config.client("s3")
    for record in lineage.rounds:  # each version's result written once
        assert len(s3.list_object_versions(Bucket=stack.config.bucket, Prefix=record["model"]["key"])["Versions"]) == 1


_KILLED_WHILE_PUBLISHING = """
import json, os, signal, sys
from fedsim import aws
from fedsim.aws import asynchronous
from fedsim.aws.config import StackConfig

def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)  # dies holding the run's lease, its plan written

asynchronous.AsyncServer._publish = killed
config = StackConfig.from_json(open(sys.argv[1]).read())
aws.AggregationHandler(config).handle(json.load(open(sys.argv[2])))
"""


def test_a_handler_process_killed_while_publishing_is_taken_over(fresh, arrays, process, tmp_path):
    """With the deployed lease: the plan the dead handler wrote is the one published, once."""
    stack = fresh
    agents, threads, errors = start_agents(stack, arrays, SILOS)
    with aws.execution_context(stack, silos=SILOS, preprocess=batch) as context:
        state = process.initialize()
        with _run_with_held_first_updates(stack, context, process, state, total_versions=2, buffer_size=3,
                                          staleness_weight=constant_staleness()) as (run_id, execution, event):
            (tmp_path / "config.json").write_text(stack.config.to_json())
            (tmp_path / "event.json").write_text(json.dumps(event, default=str))
            killed = subprocess.run([sys.executable, "-c", _KILLED_WHILE_PUBLISHING, str(tmp_path / "config.json"),
                                     str(tmp_path / "event.json")], capture_output=True, text=True, timeout=300)
            assert killed.returncode == -9, killed.stderr[-2000:]
            run_item = context.store.get_item(protocol.async_run_item_key(run_id))
            assert run_item["status"] == "aggregating" and int(run_item["version"]) == 0
            plan = context.store.get_item(protocol.version_item_key(run_id, 1))
            assert sorted(u["silo"] for u in plan["applied"]) == SILOS  # the dead handler's plan is written
            started = time.monotonic()
            assert aws.AggregationHandler(stack.config).handle(event) == ["published 1"]
            assert time.monotonic() - started < LEASE_SECONDS + 15  # within a lease
        output = context.finish(process.next, run_id, execution, timeout=300)
    for thread in threads:
        thread.join(30)
    assert not errors
    expected = simulate(process, state, arrays, SILOS)
    assert_close(expected.state.global_model_weights, aws.fetch_global_model(stack.config, run_id, 1))
    assert_close(simulate(process, expected.state, arrays, SILOS), output)


class _DiesOnThirdUpdate(aws.SiloAgent):
    """Its process dies in its third update (no except clause of the agent catches it)."""

    def work(self, request):
        self.works = getattr(self, "works", 0) + 1
        if self.works == 3:
            raise SiloKilled(f"silo {self.silo_id} died mid-run (simulated)")
        return super().work(request)


def test_stale_updates_are_refused_and_recorded_with_the_reason(fresh, arrays, process):
    """K=1, max_staleness=0, the three first updates delivered together: the first makes version 1,
    the other two (now one version stale) are refused, and recorded with version 2's plan."""
    stack = fresh
    agents, threads, errors = start_agents(stack, arrays, SILOS)
    with aws.execution_context(stack, silos=SILOS, preprocess=batch) as context:
        with _run_with_held_first_updates(stack, context, process, process.initialize(), total_versions=3, buffer_size=1,
                                          max_staleness=0) as (run_id, execution, event):
            assert aws.AggregationHandler(stack.config).handle(event) == ["published 1"]
        context.finish(process.next, run_id, execution, timeout=300)
        lineage = context.last_run
    for thread in threads:
        thread.join(30)
    assert not errors
    first = lineage.rounds[0]["updates"][0]["silo"]
    refused = lineage.rounds[1]["refused"]
    assert sorted(u["silo"] for u in refused) == sorted(s for s in SILOS if s != first)
    assert all(u["step"] == "1" and u["base_version"] == 0 and u["staleness"] == 1
               and u["reason"] == "staleness 1 exceeds max_staleness 0" for u in refused)
    assert all(u["staleness"] == 0 for r in lineage.rounds for u in r["updates"])
    assert [r["round"] for r in lineage.rounds] == [1, 2, 3]
    assert lineage.rounds[1]["metrics"]["async/refused"] == 2.0


def test_a_stopping_rule_ends_an_asynchronous_run_at_the_version_it_holds(fresh, arrays, process):
    stack = fresh
    agents, threads, errors = start_agents(stack, arrays, SILOS)
    with aws.execution_context(stack, silos=SILOS, preprocess=batch) as context:
        context.run_async(process, process.initialize(), SILOS, total_versions=20, buffer_size=2, deadline_seconds=300,
                          stop_rules=[aws.StopWhen("async/updates", above=1.5)])
        lineage = context.last_run
    for thread in threads:
        thread.join(30)
    assert not errors and [r["round"] for r in lineage.rounds] == [1]  # version 1 has 2 updates: over 1.5
    assert "async/updates" in lineage.stop_reason
    assert [agent.outcomes[-1].startswith("asynchronous run over") for agent in agents] == [True] * 3


def test_a_process_whose_model_update_is_not_a_mean_is_refused_before_anything_runs(fresh, process):
    summed = learning.build_weighted_fed_avg(model_fn, lambda: optimizers.build_sgdm(0.1),
                                             model_aggregator=aggregators.MeanFactory())
    with aws.execution_context(fresh, silos=SILOS) as context:
        with pytest.raises(AsyncUnsupportedError, match="two sums"):
            context.start_async(summed, summed.initialize(), SILOS, total_versions=2)
        with pytest.raises(ValueError, match="buffer_size must be from 1 to the 3 silos"):
            context.start_async(process, process.initialize(), SILOS, total_versions=2, buffer_size=4)


class _ThrottledOnce(aws.SiloAgent):
    """AWS throttles its second upload past every retry of the store (TransientStoreError)."""

    def _report_update(self, request, run_id, step):
        self.updates_tried = getattr(self, "updates_tried", 0) + 1
        if self.updates_tried == 2:
            raise TransientStoreError("writing silos/... : Throttling (simulated, after every retry)")
        return super()._report_update(request, run_id, step)


def _six_versions_with_silo_c_as(stack, arrays, process, agent_class):
    """Six versions (K=2) with silos a and b as usual and c running `agent_class`:
    `(lineage, a's and b's errors, c's agent, c's errors)`."""
    agents, threads, errors = start_agents(stack, arrays, ["a", "b"])
    odd, odd_threads, odd_errors = start_agents(stack, arrays, ["c"], agent_class=agent_class)
    with aws.execution_context(stack, silos=SILOS, preprocess=batch) as context:
        context.run_async(process, process.initialize(), SILOS, total_versions=6, buffer_size=2, deadline_seconds=300)
    for thread in threads + odd_threads:
        thread.join(30)
    return context.last_run, errors, odd[0], odd_errors


def test_a_silo_throttled_mid_run_keeps_working_on_the_newest_version(fresh, arrays, process):
    lineage, errors, throttled, throttled_errors = _six_versions_with_silo_c_as(fresh, arrays, process, _ThrottledOnce)
    assert not errors and not throttled_errors  # no exit, no verdict: the agent went on
    assert throttled.updates_tried >= 2 and throttled.outcomes[-1].startswith("asynchronous run over")
    assert len(lineage.rounds) == 6


def test_a_version_that_cannot_be_computed_fails_the_run_with_its_cause_and_ends_the_silos_loop(fresh, arrays, process,
                                                                                                monkeypatch):
    def broken(self, *args, **kwargs):
        raise ValueError("the update phase failed (simulated)")

    monkeypatch.setattr(asynchronous.AsyncServer, "_publish", broken)
    stack = fresh
    agents, threads, errors = start_agents(stack, arrays, SILOS)
    with aws.execution_context(stack, silos=SILOS, preprocess=batch) as context:
        with pytest.raises(aws.RoundFailedError, match="the update phase failed"):
            context.run_async(process, process.initialize(), SILOS, total_versions=3, buffer_size=2, deadline_seconds=300)
    for thread in threads:
        thread.join(30)
    assert not errors and all(agent.outcomes[-1].startswith("asynchronous run over") for agent in agents)
    assert stack.handler_errors or stack.handler_retries  # the failing batch was raised (and redelivered)
    stack.handler_errors.clear()  # expected here


def test_a_silo_that_dies_mid_run_does_not_stop_it(fresh, arrays, process):
    """Last in the module: the dead silo's run message stays in flight after the test."""
    lineage, errors, _, dead_errors = _six_versions_with_silo_c_as(fresh, arrays, process, _DiesOnThirdUpdate)
    assert not errors and [type(error).__name__ for _, error in dead_errors] == ["SiloKilled"]
    contributions = collections.Counter(u["silo"] for r in lineage.rounds for u in r["updates"])
    assert contributions["c"] <= 2 and contributions["a"] >= 2 and contributions["b"] >= 2
    assert len(lineage.rounds) == 6 and lineage.stop_reason == "all 6 versions published"
    weights = [u["weight"] for r in lineage.rounds for u in r["updates"]]
    staleness = [u["staleness"] for r in lineage.rounds for u in r["updates"]]
    assert weights == pytest.approx([1 / (1 + s) ** 0.5 for s in staleness])  # the default: FedBuff's polynomial weight
