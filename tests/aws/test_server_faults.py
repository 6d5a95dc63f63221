"""The server under hostile silo records and a dying handler (issue cases b2, m, n and j), on the local stack.

Every round that completes is compared with the same round simulated over the honest silos.
"""

import contextlib
import io
import json
from decimal import Decimal
import time

import numpy as np
import pytest
from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import ClientError

from fedsim import aws
from fedsim.aws import protocol, template
from fedsim.aws.lease import LEASE_SECONDS
from tests.aws.helpers import SILOS, assert_close, batch, held_stream, simulate, start_agents


def _wait_for(condition, what, timeout=60):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, what
        time.sleep(0.1)


class _ValidNaNSilo(aws.SiloAgent):
    """Uploads NaNs and writes its record with `status: valid` already set (case n)."""

    def work(self, request):
        arrays = dict(np.load(io.BytesIO(super().work(request))))
        first = sorted(k for k in arrays if arrays[k].dtype.kind == "f" and arrays[k].size)[0]
        arrays[first] = np.full_like(arrays[first], np.nan)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()


class _BogusTokenSilo(aws.SiloAgent):
    """Relays a task token of its own making (case m)."""

    def process(self, message):
        real_put = self.store.put_item_if_absent
        self.store.put_item_if_absent = lambda item: real_put(dict(item, task_token="bogus-token"))
        return super().process(message)


def test_a_record_claiming_valid_with_nan_is_rejected_and_the_honest_round_completes(fresh, arrays, process):
    stack = fresh
    with aws.execution_context(stack, silos=SILOS, quorum=2, preprocess=batch, round_deadline_seconds=120) as context:
        state = process.initialize()
        bad, _, _ = start_agents(stack, arrays, ["c"], agent_class=_ValidNaNSilo)
        real_put = bad[0].store.put_item_if_absent
        bad[0].store.put_item_if_absent = lambda item: real_put(dict(item, status="valid"))
        run_id, execution = context.start_rounds(process.next, state, SILOS)
        _wait_for(lambda: context.store.round_verdicts(run_id, 1).get("c", {}).get("status") == "rejected", "c not rejected")
        start_agents(stack, arrays, ["a", "b"])
        output = context.finish(process.next, run_id, execution)
        assert "non-finite" in context.last_report.rounds[0]["rejected"]["c"]
        assert context.last_report.rounds[0]["aggregated"] == ["a", "b"]
        assert_close(simulate(process, state, arrays, ["a", "b"]), output)


def test_a_silo_cannot_supply_the_task_token(fresh, arrays, process):
    """The token comes from the server's own copy of the round message, stored in the round item."""
    stack = fresh
    with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=120) as context:
        state = process.initialize()
        start_agents(stack, arrays, ["b", "c"], agent_class=_BogusTokenSilo)
        start_agents(stack, arrays, ["a"])
        output = process.next(state, SILOS)
        assert_close(simulate(process, state, arrays, SILOS), output)
        round_item = context.store.get_item(protocol.round_item_key(context.last_report.run_id, 1))
        assert round_item["task_token"] not in ("bogus-token", None) and round_item["answered"] == "yes"


def test_a_silo_rewriting_its_record_does_not_undo_its_verdict(fresh, arrays, process):
    stack = fresh
    with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=120) as context:
        state = process.initialize()
        run_id, execution = context.start_rounds(process.next, state, SILOS)
        start_agents(stack, arrays, ["a"])
        _wait_for(lambda: context.store.round_verdicts(run_id, 1).get("a", {}).get("status") == "valid", "a not judged")
        record = context.store.get_item(protocol.silo_item_key("a", run_id, 1))
        rewritten = {k: Decimal(str(v)) if isinstance(v, float) else v for k, v in record.items()}
        rewritten.update(status="whatever", note="re-put with a plain PutItem")
        context.store.dynamodb.put_item(TableName=stack.config.table,
                                        Item={k: TypeSerializer().serialize(v) for k, v in rewritten.items()})
        start_agents(stack, arrays, ["b", "c"])
        output = context.finish(process.next, run_id, execution)
        assert context.store.round_verdicts(run_id, 1)["a"]["status"] == "valid"
        assert_close(simulate(process, state, arrays, SILOS), output)


class _WordsForNumbersSilo(aws.SiloAgent):
    """Writes words where its record's numbers go (size, work seconds): a record's numbers are input too."""

    def process(self, message):
        real_put = self.store.put_item_if_absent
        self.store.put_item_if_absent = lambda item: real_put(dict(item, size="lots", work_seconds="forever"))
        return super().process(message)


def test_a_record_with_words_for_numbers_is_still_judged_by_its_upload(fresh, arrays, process):
    stack = fresh
    with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=120) as context:
        state = process.initialize()
        start_agents(stack, arrays, ["a", "b"])
        start_agents(stack, arrays, ["c"], agent_class=_WordsForNumbersSilo)
        output = process.next(state, SILOS)
        verdict = context.store.round_verdicts(context.last_report.run_id, 1)["c"]
    assert verdict["status"] == "valid" and verdict["size"] is None and verdict["silo_work_seconds"] is None
    assert_close(simulate(process, state, arrays, SILOS), output)


def _round_with_held_records(stack, context, process, state, arrays):
    """Starts round 1 with every silo working and holds their records: `(run_id, execution, event)`,
    the event a handler would be given (and given again, as a retried Lambda is)."""
    with held_stream(stack) as held:
        run_id, execution = context.start_rounds(process.next, state, SILOS)
        start_agents(stack, arrays, SILOS)
        results_key = protocol.round_key(run_id, 1)
        _wait_for(lambda: {r["dynamodb"]["NewImage"]["pk"]["S"] for r in held if r["eventName"] == "INSERT"
                           and r["dynamodb"]["NewImage"].get("round_key", {}).get("S") == results_key} == set(SILOS),
                  "the silos' records were not all held")
        return run_id, execution, {"Records": list(held)}


class _Killed(BaseException):
    """Stands for the handler's process being killed: nothing after it runs, no except clause catches it."""


class _DiesAfterClaiming(aws.AggregationHandler):
    def _aggregate(self, *args, **kwargs):
        raise _Killed()


def _die(*args, **kwargs):
    raise _Killed()


class _DiesBeforeAnswering(aws.AggregationHandler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokens.answer = _die


@pytest.mark.parametrize("dying, status_left", [(_DiesAfterClaiming, "aggregating"), (_DiesBeforeAnswering, "done")])
def test_a_handler_that_dies_does_not_lose_the_round(fresh, arrays, process, dying, status_left):
    stack = fresh
    with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=120) as context:
        state = process.initialize()
        run_id, execution, event = _round_with_held_records(stack, context, process, state, arrays)
        with pytest.raises(_Killed):
            dying(stack.config, lease_seconds=0.5).handle(event)
        round_item = context.store.get_item(protocol.round_item_key(run_id, 1))
        assert round_item["status"] == status_left and not round_item.get("answered")
        # The stream delivers again: the new handler waits out the dead one's lease (it is no
        # longer renewed) and takes the round over, or answers it from its stored outcome.
        retry = aws.AggregationHandler(stack.config, lease_seconds=0.5).handle(event)
        assert retry == ["aggregated" if status_left == "aggregating" else "answered"]
        output = context.finish(process.next, run_id, execution)
        assert_close(simulate(process, state, arrays, SILOS), output)
        versions = stack.config.client("s3").list_object_versions(
            Bucket=stack.config.bucket, Prefix=f"runs/{run_id}/round-1/result.npz")["Versions"]
        assert len(versions) == 1  # the result is written once
        for record in context.store.round_results(run_id, 1):  # what the silo role's PutItem is limited to
            assert set(record) <= set(template.SILO_RECORD_ATTRIBUTES), record


def test_a_silo_cannot_act_as_another_on_the_local_stack(fresh):
    """Each local silo has its own assumed-role credentials and moto enforces IAM (S3 and SQS)."""
    stack = fresh
    silo_a = stack.silo_config("a")
    assert silo_a.access_key != stack.silo_config("b").access_key != stack.config.access_key
    s3, sqs = silo_a.client("s3"), silo_a.client("sqs")
    s3.put_object(Bucket=silo_a.bucket, Key="silos/a/probe", Body=b"own prefix")
    denied = []
    for attempt in (lambda: s3.put_object(Bucket=silo_a.bucket, Key="silos/b/probe", Body=b"as b"),
                    lambda: s3.get_object(Bucket=silo_a.bucket, Key="runs/any/round-1/carry.npz"),
                    lambda: s3.get_object(Bucket=silo_a.bucket, Key="runs/any/round-1/result.npz"),
                    lambda: sqs.receive_message(QueueUrl=silo_a.silo_queues["b"], WaitTimeSeconds=0),
                    lambda: sqs.receive_message(QueueUrl=stack.config.server_queue_url, WaitTimeSeconds=0)):
        with pytest.raises(ClientError) as error:
            attempt()
        denied.append(error.value.response["Error"]["Code"])
    assert all(code in ("AccessDenied", "403") for code in denied), denied
    sqs.receive_message(QueueUrl=silo_a.silo_queues["a"], WaitTimeSeconds=0)  # its own queue works


# AWS's ordinary failures: bursts that outlive boto3's retries, cut downloads, lost answers. -------

@contextlib.contextmanager
def _patched(client, name, wrapper):
    """Replaces one method of a boto3 client (this client only) for the duration of a block."""
    original = getattr(client, name)
    setattr(client, name, wrapper(original))
    try:
        yield
    finally:
        setattr(client, name, original)


def _server_error(operation):
    return ClientError({"Error": {"Code": "InternalError", "Message": "injected"},
                        "ResponseMetadata": {"HTTPStatusCode": 500}}, operation)


def _burst(times, operation):
    """Fails the first `times` calls with a 503 SlowDown, as S3 does under load."""
    calls = {"n": 0}

    def wrapper(original):
        def call(**kwargs):
            calls["n"] += 1
            if calls["n"] <= times:
                raise ClientError({"Error": {"Code": "SlowDown", "Message": "injected"},
                                   "ResponseMetadata": {"HTTPStatusCode": 503}}, operation)
            return original(**kwargs)
        return call
    return wrapper, calls


def _cut_bodies(times):
    """The first `times` downloads end early: the body is cut after half its bytes."""
    calls = {"n": 0}

    def wrapper(original):
        def call(**kwargs):
            response = original(**kwargs)
            calls["n"] += 1
            if calls["n"] <= times:
                data = response["Body"].read()
                response["Body"] = io.BytesIO(data[: len(data) // 2])
            return response
        return call
    return wrapper, calls


def _answer_lost(operation):
    """Every write is applied, then its answer is lost once (a 500 after the write): the caller retries."""
    lost = set()

    def wrapper(original):
        def call(**kwargs):
            result = original(**kwargs)
            key = json.dumps({k: v for k, v in kwargs.items() if k != "Body"}, sort_keys=True, default=str)  # the request
            if key not in lost:
                lost.add(key)
                raise _server_error(operation)
            return result
        return call
    return wrapper, lost


def test_a_burst_and_cut_downloads_on_the_handlers_reads_are_not_verdicts(fresh, arrays, process):
    stack = fresh
    burst, burst_calls = _burst(12, "GetObject")  # more than boto3's own retries
    cut, cut_calls = _cut_bodies(2)
    s3 = stack.handler.store.s3
    with _patched(s3, "head_object", burst), _patched(s3, "get_object", cut):
        with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=120) as context:
            _, _, errors = start_agents(stack, arrays, SILOS)
            state = process.initialize()
            output = process.next(state, SILOS)
            verdicts = context.store.round_verdicts(context.last_report.run_id, 1)
    assert burst_calls["n"] > 12 and cut_calls["n"] > 2  # the faults happened
    assert {s: v["status"] for s, v in verdicts.items()} == {s: "valid" for s in SILOS}  # no honest silo rejected
    assert not errors and not stack.handler_errors
    assert_close(simulate(process, state, arrays, SILOS), output)


def test_lost_answers_on_every_write_are_retried_and_the_round_equals_the_simulation(fresh, arrays, process):
    stack = fresh
    handler_store = stack.handler.store
    with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=120) as context:
        agents, _, errors = start_agents(stack, arrays, SILOS)
        patches = contextlib.ExitStack()
        stores = [handler_store, context.store] + [agent.store for agent in agents]
        lost_keys = []
        for store in stores:
            for client, operation in ((store.s3, "put_object"), (store.dynamodb, "put_item"), (store.dynamodb, "update_item")):
                wrapper, lost = _answer_lost(operation)
                lost_keys.append(lost)
                patches.enter_context(_patched(client, operation, wrapper))
        wrapper, started = _answer_lost("StartExecution")  # the run's start, applied and its answer lost
        patches.enter_context(_patched(context.sfn, "start_execution", wrapper))
        lost_keys.append(started)
        with patches:
            state = process.initialize()
            output = process.next(state, SILOS)
    assert len(started) == 1
    assert sum(len(lost) for lost in lost_keys) >= 10  # writes of the manifest, uploads, records, verdicts, claim, transitions
    assert not errors and not stack.handler_errors
    assert [agent.outcomes[-1] for agent in agents] == ["reported"] * 3
    assert_close(simulate(process, state, arrays, SILOS), output)


_KILLED_AFTER_CLAIM = """
import json, os, signal, sys
from fedsim import aws
from fedsim.aws.config import StackConfig

class KilledAfterClaim(aws.AggregationHandler):
    def _aggregate(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)  # the process dies holding the claim

config = StackConfig.from_json(open(sys.argv[1]).read())
KilledAfterClaim(config).handle(json.load(open(sys.argv[2])))
"""


def test_a_handler_process_killed_after_its_claim_is_taken_over_within_a_lease(fresh, arrays, process, tmp_path):
    """With the deployed lease settings: the next delivery waits out the dead claim (no longer
    renewed) and aggregates, long before the round's deadline."""
    import subprocess
    import sys

    stack = fresh
    with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=300) as context:
        state = process.initialize()
        run_id, execution, event = _round_with_held_records(stack, context, process, state, arrays)
        (tmp_path / "config.json").write_text(stack.config.to_json())
        (tmp_path / "event.json").write_text(json.dumps(event, default=str))  # as the Lambda receives it: JSON
        killed = subprocess.run([sys.executable, "-c", _KILLED_AFTER_CLAIM, str(tmp_path / "config.json"), str(tmp_path / "event.json")],
                                capture_output=True, text=True, timeout=300)
        assert killed.returncode == -9, killed.stderr[-2000:]
        round_item = context.store.get_item(protocol.round_item_key(run_id, 1))
        assert round_item["status"] == "aggregating"  # the dead process's claim is left behind
        started = time.monotonic()
        assert aws.AggregationHandler(stack.config).handle(event) == ["aggregated"]  # the stream delivers again
        assert time.monotonic() - started < LEASE_SECONDS + 15  # within a lease, not at the deadline
        output = context.finish(process.next, run_id, execution)
        assert_close(simulate(process, state, arrays, SILOS), output)


def _documented_stream_event(stack, run_id, silos):
    """The silos' records as the DynamoDB stream hands them to a Lambda, in the shape AWS documents
    ("Using AWS Lambda with Amazon DynamoDB", sample event), plus records the handler must skip."""
    serializer = TypeSerializer()

    def image(item):
        return {k: serializer.serialize(Decimal(str(v)) if isinstance(v, float) else v) for k, v in item.items()}

    records = []
    for number, silo in enumerate(silos):
        item = aws.store.Store(stack.config).get_item(protocol.silo_item_key(silo, run_id, 1))
        records.append({
            "eventID": f"{number + 1}", "eventName": "INSERT", "eventVersion": "1.1", "eventSource": "aws:dynamodb",
            "awsRegion": stack.config.region,
            "dynamodb": {"ApproximateCreationDateTime": time.time(), "Keys": image({"pk": item["pk"], "sk": item["sk"]}),
                         "NewImage": image(item), "SequenceNumber": f"{111 + number}", "SizeBytes": 512,
                         "StreamViewType": "NEW_IMAGE"},
            "eventSourceARN": stack.config.stream_arn or "arn:aws:dynamodb:us-east-1:123456789012:table/fedsim/stream/2026",
        })
    removed = json.loads(json.dumps(records[0]))
    removed.update(eventName="REMOVE", eventID="98")
    del removed["dynamodb"]["NewImage"]
    own = json.loads(json.dumps(records[0]))  # the server's own items are on the same stream
    own["dynamodb"]["NewImage"]["pk"] = {"S": f"round#{run_id}"}
    return {"Records": records + [removed, own]}


def test_the_lambda_entry_point_handles_a_documented_stream_event_with_throttled_answers(fresh, arrays, process, monkeypatch):
    """`fedsim.aws.handler.handler(event, context)`, configured from the environment as the
    template configures it; Step Functions throttles its answer twice and loses one."""
    import importlib

    lambda_module = importlib.import_module("fedsim.aws.handler")  # the package attribute is the function

    stack = fresh
    monkeypatch.setenv("FEDSIM_BUCKET", stack.config.bucket)
    monkeypatch.setenv("FEDSIM_TABLE", stack.config.table)
    monkeypatch.setenv("FEDSIM_SERVER_QUEUE_URL", stack.config.server_queue_url)
    monkeypatch.setenv("FEDSIM_ENDPOINT_URL", stack.config.endpoint_url)
    monkeypatch.setenv("AWS_REGION", stack.config.region)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", stack.config.access_key or "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", stack.config.secret_key or "testing")
    monkeypatch.setattr(lambda_module, "_HANDLER", None)
    with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=120) as context:
        state = process.initialize()
        run_id, execution, _ = _round_with_held_records(stack, context, process, state, arrays)
        event = json.loads(json.dumps(_documented_stream_event(stack, run_id, SILOS)))  # as delivered: JSON
        lambda_module.handler({"Records": []}, None)  # the container's first invocation builds its handler
        sfn = lambda_module._HANDLER.tokens.sfn
        throttled, throttled_calls = _burst(2, "SendTaskSuccess")
        lost, lost_answers = _answer_lost("SendTaskSuccess")
        with _patched(sfn, "send_task_success", lambda original: throttled(lost(original))):
            answer = lambda_module.handler(event, None)
        output = context.finish(process.next, run_id, execution)
    assert answer == {"outcomes": ["aggregated"]}
    assert throttled_calls["n"] >= 4 and len(lost_answers) == 1  # throttled twice, applied, answer lost, retried
    assert lambda_module._HANDLER.store.config.endpoint_url == stack.config.endpoint_url
    assert_close(simulate(process, state, arrays, SILOS), output)
