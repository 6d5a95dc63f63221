"""Silos trust nothing they did not accept: attacks from a compromised server, on the local stack.

Each test is an attack that must fail with the message a user sees, while the honest silos'
round still completes and equals the simulation.
"""

import collections
import hashlib
import json
import os
import re
import struct
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import fedsim
from fedsim import aws, learning
from fedsim.aws import protocol
from fedsim.learning import optimizers
from tests.aws.helpers import SILOS, assert_close, batch, model_fn, simulate, start_agents

BATCHES = fedsim.SequenceType(collections.OrderedDict(
    x=fedsim.TensorType(tf.float32, [None, 5]), y=fedsim.TensorType(tf.int32, [None])))


def _upload_crafted(context, form, work_bytes):
    """What a compromised server does: put crafted work bytes in the bucket and point the run at them."""
    digest = hashlib.sha256(work_bytes).hexdigest()
    if not context.store.exists(protocol.computation_key(digest)):
        context.store.put_new(protocol.computation_key(digest), work_bytes, digest)
    references = {name: context.store.put_computation(phase) for name, phase in form.phases().items()}
    references["work"] = {"key": protocol.computation_key(digest), "sha256": digest}
    return references


def _edit(data, edit_header=None, edit_graph=None):
    magic, (length,) = data[:8], struct.unpack(">Q", data[8:16])
    header, rest = json.loads(data[16:16 + length]), data[16 + length:]
    if edit_header:
        edit_header(header)
    if edit_graph:
        sizes = [b["size"] for b in header["blobs"]]
        blobs, offset = [], 0
        for size in sizes:
            blobs.append(rest[offset:offset + size])
            offset += size
        graph_def = tf.compat.v1.GraphDef.FromString(blobs[0])
        edit_graph(graph_def)
        blobs[0] = graph_def.SerializeToString()
        header["blobs"][0] = {"size": len(blobs[0]), "sha256": hashlib.sha256(blobs[0]).hexdigest()}
        rest = b"".join(blobs)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return magic + struct.pack(">Q", len(text)) + text + rest


def _honest_round(context, stack, arrays, process, state):
    """A normal round on the same stack after an attack: completes and equals the simulation."""
    _, threads, errors = start_agents(stack, arrays, SILOS)
    output = process.next(state, SILOS)
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert_close(simulate(process, state, arrays, SILOS), output)
    assert context.last_report.rounds[0]["aggregated"] == SILOS


def _failed_by_the_handler(context, execution):
    """The round failed from the silos' refusals (SendTaskFailure), not at its deadline."""
    status = context.sfn.describe_execution(executionArn=execution)
    assert status["status"] == "FAILED" and status.get("error") != "States.Timeout", status
    assert context.last_report.rounds[0]["status"] == "failed"


def test_a_crafted_container_type_imports_nothing_on_the_silos(fresh, arrays, process, tmp_path, monkeypatch):
    stack = fresh
    marker = tmp_path / "ran.txt"
    (tmp_path / "attacker_module.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nPopen = dict\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # importable, were anything to import it
    with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=120) as context:
        form = context.form(process.next)

        def name_the_attacker(header):
            text = json.dumps(header).replace('"fedsim.learning.models.ModelWeights"', '"py:attacker_module:Popen"')
            header.clear()
            header.update(json.loads(text))

        crafted = _edit(fedsim.serialize_computation(form.work), edit_header=name_the_attacker)
        assert b"py:attacker_module:Popen" in crafted
        references = _upload_crafted(context, form, crafted)
        monkeypatch.setattr(context, "_uploaded_phases", lambda form: references)
        _, threads, errors = start_agents(stack, arrays, SILOS)
        state = process.initialize()
        output = process.next(state, SILOS)
        for thread in threads:
            thread.join(timeout=60)
        assert not errors, errors
    assert "attacker_module" not in sys.modules and not marker.exists()
    assert_close(simulate(process, state, arrays, SILOS), output)  # the name was only a name


def _nosy_round(directory):
    """A canonical-form round whose client work lists, reads and writes files on the silo."""

    @fedsim.tf_computation(BATCHES, tf.float32)
    def nosy_work(batches, weight):
        del batches
        listing = tf.strings.reduce_join(tf.io.matching_files(os.path.join(directory, "*")), separator=",")
        secret = tf.io.read_file(os.path.join(directory, "secret.txt"))
        tf.io.write_file(os.path.join(directory, "planted.txt"), listing)
        return tf.cast(tf.strings.length(secret), tf.float32) * weight

    @fedsim.federated_computation(fedsim.FederatedType(tf.float32, fedsim.SERVER), fedsim.FederatedType(BATCHES, fedsim.CLIENTS))
    def nosy_round(weight, data):
        leaked = fedsim.federated_sum(fedsim.federated_map(nosy_work, (data, fedsim.federated_broadcast(weight))))
        return weight, leaked

    return nosy_round


def test_client_work_that_reads_files_is_refused_and_the_round_fails_at_once(fresh, arrays, process, tmp_path):
    stack = fresh
    (tmp_path / "secret.txt").write_text("private")
    nosy_round = _nosy_round(str(tmp_path))
    with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=120) as context:
        agents, threads, errors = start_agents(stack, arrays, SILOS)
        run_id, execution = context.start_rounds(nosy_round, 1.0, SILOS)
        with pytest.raises(aws.RoundFailedError) as failure:
            context.finish(nosy_round, run_id, execution)
        for thread in threads:
            thread.join(timeout=60)
        assert not errors, errors
        message = str(failure.value)
        # The first refusal already makes the quorum of 3 unreachable: the round fails at once.
        assert re.search(r"round 1: 0 valid result\(s\), quorum 3; rejected: ([abc]): the silo refused the round: "
                         r"silo \1 refused the work computation [0-9a-f]{64}: the computation 'work' uses the op", message), message
        assert "uses the op MatchingFiles" in message and "ReadFile" in message and "WriteFile" in message
        assert sorted(agent.outcomes[0] for agent in agents) == ["refused"] * 3
        _failed_by_the_handler(context, execution)
        assert not (tmp_path / "planted.txt").exists()
        _honest_round(context, stack, arrays, process, process.initialize())


def test_a_hand_made_pyfunc_work_graph_is_refused(fresh, arrays, process, monkeypatch):
    stack = fresh
    with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=120) as context:
        form = context.form(process.next)

        def add_pyfunc(graph_def):
            node = graph_def.node.add()
            node.name, node.op = "exfiltrate", "PyFunc"
            node.attr["token"].s = b"pyfunc_0"

        crafted = _edit(fedsim.serialize_computation(form.work), edit_graph=add_pyfunc)
        references = _upload_crafted(context, form, crafted)
        with monkeypatch.context() as patch:
            patch.setattr(context, "_uploaded_phases", lambda form: references)
            start_agents(stack, arrays, SILOS)
            run_id, execution = context.start_rounds(process.next, process.initialize(), SILOS)
            with pytest.raises(aws.RoundFailedError, match=r"uses the op PyFunc \(node 'exfiltrate'\)"):
                context.finish(process.next, run_id, execution)
        _failed_by_the_handler(context, execution)
        _honest_round(context, stack, arrays, process, process.initialize())


def test_a_pinned_silo_runs_only_what_it_accepted(fresh, arrays, process, tmp_path):
    stack = fresh
    config_path = tmp_path / "stack.json"
    config_path.write_text(stack.silo_config("a").to_json())
    np.savez(tmp_path / "a.npz", **arrays["a"])
    other = learning.build_weighted_fed_avg(model_fn, lambda: optimizers.build_sgdm(0.05))  # another algorithm
    with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=120) as context:
        pinned = context.silo_computation_hashes(process.next)
        assert set(pinned) == {"work", "preprocess"}
        assert context.silo_computation_hashes(other.next)["work"] != pinned["work"]
        (tmp_path / "pins.txt").write_text(f"# reviewed 2026-11-21\n{pinned['work']}\n")
        silo_a = subprocess.Popen(
            [sys.executable, "-m", "fedsim.aws.silo", "--stack-config", str(config_path), "--silo-id", "a",
             "--data", str(tmp_path / "a.npz"), "--accept", pinned["preprocess"], "--accept-file", str(tmp_path / "pins.txt"),
             "--rounds", "2", "--idle-timeout", "120"],
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=""), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            # The accepted computation: every silo takes part, the round equals the simulation.
            _, threads, errors = start_agents(stack, arrays, ["b", "c"])
            state = process.initialize()
            output = process.next(state, SILOS)
            for thread in threads:
                thread.join(timeout=60)
            assert not errors, errors
            assert context.last_report.rounds[0]["aggregated"] == SILOS
            assert_close(simulate(process, state, arrays, SILOS), output)
            review = subprocess.run(
                [sys.executable, "-m", "fedsim.aws.review", "--stack-config", str(config_path), "--run",
                 context.last_report.run_id], env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True,
                timeout=120,
            )
            assert review.returncode == 0, review.stderr
            assert f"pin with: --accept {pinned['preprocess']},{pinned['work']}" in review.stdout
            assert "VarHandleOp" in review.stdout and "NOT ALLOWED" not in review.stdout
            # An unpinned computation: silo a refuses it; b and c make the quorum of 2.
            with aws.execution_context(stack, silos=SILOS, quorum=2, preprocess=batch, round_deadline_seconds=120) as second:
                _, threads, errors = start_agents(stack, arrays, ["b", "c"])
                state = other.initialize()
                output = other.next(state, SILOS)
                for thread in threads:
                    thread.join(timeout=60)
                assert not errors, errors
                assert second.last_report.rounds[0]["aggregated"] == ["b", "c"]
                assert_close(simulate(other, state, arrays, ["b", "c"]), output)
                unpinned = second.silo_computation_hashes(other.next)["work"]
            _, stderr = silo_a.communicate(timeout=120)
            assert silo_a.returncode == 0, stderr.decode()[-2000:]
            assert f"silo a refused the work computation {unpinned}: it is not pinned" in stderr.decode()
            refusal = context.store.get_item(protocol.silo_item_key("a", second.last_report.run_id, 1))
            assert "it is not pinned" in refusal["refused"]  # rejected, or late if b and c closed the round first
        finally:
            if silo_a.poll() is None:
                silo_a.kill()


def test_the_silo_command_line_checks_its_pins(tmp_path):
    config_path = tmp_path / "stack.json"
    config_path.write_text(aws.StackConfig("us-east-1", "bucket", "table", "", "", "", {"a": "queue"}).to_json())
    (tmp_path / "a.npz").write_bytes(b"")
    for arguments, message in [(["--accept", "not-a-hash"], "is not a computation hash"),
                               (["--accept-file", str(tmp_path / "missing.txt")], "--accept-file"),
                               (["--accept", ","], "named no hash")]:
        completed = subprocess.run(
            [sys.executable, "-m", "fedsim.aws.silo", "--stack-config", str(config_path), "--silo-id", "a",
             "--data", str(tmp_path / "a.npz"), *arguments],
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=""), capture_output=True, text=True, timeout=120,
        )
        assert completed.returncode == 2 and message in completed.stderr, completed.stderr[-2000:]
