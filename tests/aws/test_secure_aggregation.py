"""Secure aggregation on the local stack: a FedAvg round with `secure_aggregator()` runs SecAgg
between silos (each with its own credentials and pinned identities) and the handler; it equals
the simulation, a silo lost after its masked input is recovered, and what a silo uploads says
nothing about its update."""

import collections
import hashlib
import io
import json
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from fedsim import aws, learning
from fedsim.aws import review, secure_round, template
from fedsim.aws.silo import LocalDataError
from fedsim.core import phase_runner, structure
from fedsim.core.secagg import crypto
from fedsim.learning import optimizers
from tests.aws.helpers import SILOS, SiloKilled, assert_close, batch, simulate, start_agents

IDENTITIES = {s: crypto.identity_key() for s in SILOS}
PINNED = {s: crypto.public_bytes(key) for s, key in IDENTITIES.items()}


def _model_fn():  # ~1,400 weights: enough entries to see whether an upload follows the update
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(200, activation="relu"), keras.layers.Dense(3)])
    return learning.from_keras_model(
        model, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        input_spec=collections.OrderedDict(x=tf.TensorSpec([None, 5], tf.float32), y=tf.TensorSpec([None], tf.int32)))


@pytest.fixture(scope="module")
def secure_process():
    return learning.build_weighted_fed_avg(_model_fn, lambda: optimizers.build_sgdm(0.1),
                                           model_aggregator=learning.secure_aggregator())


@pytest.fixture(autouse=True)
def short_phases(monkeypatch):
    monkeypatch.setattr(secure_round, "PHASE_SECONDS", 3.0)  # a dead silo is given up on sooner


def _start(stack, arrays, silos, agent_class=aws.SiloAgent, rounds=1):
    """Agents with their identity keys and pins: `(agents, errors, threads)`."""
    agents, threads, errors = start_agents(stack, arrays, silos, rounds=rounds, agent_class=agent_class, options_for=lambda silo: {
        "identity": IDENTITIES[silo], "pinned_identities": PINNED})
    return agents, errors, threads


def _uploads(stack, run_id):
    """Every object and item the silos wrote in the run, as the server's operator reads them."""
    s3, store = stack.config.client("s3"), aws.store.Store(stack.config)
    objects = {}
    for silo in SILOS:
        for entry in s3.list_objects_v2(Bucket=stack.config.bucket, Prefix=f"silos/{silo}/{run_id}/").get("Contents", []):
            objects[entry["Key"]] = s3.get_object(Bucket=stack.config.bucket, Key=entry["Key"])["Body"].read()
    items = [item for silo in SILOS for item in store.query_partition(silo) if run_id in item["sk"]]
    return objects, items


def test_a_secure_round_equals_the_simulation_and_no_upload_reveals_an_update(fresh, arrays, secure_process):
    stack = fresh
    agents, errors, threads = _start(stack, arrays, SILOS)
    with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=120) as context:
        state = secure_process.initialize()
        output = secure_process.next(state, SILOS)
        run_id = context.last_report.run_id
        form = context.form(secure_process.next)
        # What the operator reviews and pins for this run: the work with its secure layout.
        assert review.run_pins(aws.store.Store(stack.config), run_id)["work"] == context.silo_computation_hashes(secure_process.next)["work"]
    for thread in threads:  # each silo returns once it sees the step closed
        thread.join(timeout=60)
    assert not errors, errors
    assert [agent.outcomes[-1] for agent in agents] == ["reported"] * 3
    assert_close(simulate(secure_process, state, arrays, SILOS), output)

    # What the server can read: each silo's upload holds a masked vector where its quantized
    # update would be; compared with the true input (the work run here on the silo's own data).
    objects, items = _uploads(stack, run_id)
    layout = secure_round.SecureLayout.of(form.client_output_type, form.secure_bitwidths)
    broadcast, _ = phase_runner.prepare(form.prepare, state)
    bits = layout.modulus_bits(len(SILOS))
    for silo in SILOS:
        data = objects[f"silos/{silo}/{run_id}/round-1/work.npz"]
        with np.load(io.BytesIO(data)) as archive:
            masked = archive[sorted(archive.files)[-1]].astype(np.float64)
        dataset = batch.call_value(tf.data.Dataset.from_tensor_slices(arrays[silo]))
        _, x = layout.split(phase_runner.work(form.work, dataset, broadcast, silo))
        x = x.astype(np.float64)
        assert masked.shape == x.shape and x.std() > 0
        assert abs(np.corrcoef(masked, x)[0, 1]) < 0.1, silo  # the plain upload would be r = 1
        assert abs(masked.mean() / 2**bits - 0.5) < 0.05  # spread over the whole modulus
        assert (masked >= 2**layout.value_bits).mean() > 0.6  # where x never goes
    for item in items:  # the protocol items: keys, ciphertexts, signatures, shares; never a vector
        assert set(item) <= set(template.SILO_RECORD_ATTRIBUTES), item
        if "secagg" in item and item["sk"].endswith(("advertise", "shares", "unmask")):
            assert json.loads(item["secagg"])["kind"] in ("advertise_keys", "encrypted_shares", "unmask_shares")


class _DiesBeforeSigning(aws.SiloAgent):
    """Uploads its masked input, then dies before signing the survivors (its process killed)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        real_put = self.store.put_item_if_absent

        def put(item):
            if str(item.get("sk", "")).endswith("#sa#signature"):
                raise SiloKilled("died before signing")
            return real_put(item)

        self.store.put_item_if_absent = put


def test_a_silo_lost_after_its_masked_input_is_recovered_from_the_others_shares(fresh, arrays, secure_process, monkeypatch):
    # c must be a survivor when it dies: its masked input may come late on a loaded machine, so
    # the phases wait longer here than the module's 3 s before giving up on a silo
    monkeypatch.setattr(secure_round, "PHASE_SECONDS", 10.0)
    stack = fresh
    _, errors, _ = _start(stack, arrays, ["a", "b"])
    _, dying_errors, dying = _start(stack, arrays, ["c"], agent_class=_DiesBeforeSigning)
    with aws.execution_context(stack, silos=SILOS, quorum=2, preprocess=batch, round_deadline_seconds=120) as context:
        state = secure_process.initialize()
        output = secure_process.next(state, SILOS)
        report = context.last_report.rounds[0]
    dying[0].join(timeout=60)
    assert [e[0] for e in dying_errors] == ["c"] and not errors
    assert report["aggregated"] == SILOS  # c's masked input is in: its self-mask was rebuilt from a's and b's shares
    assert_close(simulate(secure_process, state, arrays, SILOS), output)


class _WorkFailsAfterSharing(aws.SiloAgent):
    """Exchanges its keys while its work runs (as every silo does), then its data fails the work."""

    operator_store = None  # the test's view of the table (a silo may not query it)

    def work_output(self, request):
        store = self.operator_store
        deadline = time.monotonic() + 60
        while not any(str(i.get("sk", "")).endswith("#sa#shares") for i in store.query_partition(self.silo_id)):
            assert time.monotonic() < deadline, "the keys were not shared while the work ran"
            time.sleep(0.05)
        raise LocalDataError(f"silo {self.silo_id}'s records are unreadable")


def test_a_silo_whose_work_fails_after_sharing_keys_drops_out_and_the_round_completes(fresh, arrays, secure_process):
    """Keys are advertised and shared while the work runs; a silo whose work then fails leaves
    the session: its refusal is its result, the others' round is exact without it."""
    stack = fresh
    _WorkFailsAfterSharing.operator_store = aws.store.Store(stack.config)
    agents, errors, threads = _start(stack, arrays, ["a", "b"])
    failing, failing_errors, failing_threads = _start(stack, arrays, ["c"], agent_class=_WorkFailsAfterSharing)
    with aws.execution_context(stack, silos=SILOS, quorum=2, preprocess=batch, round_deadline_seconds=120) as context:
        state = secure_process.initialize()
        output = secure_process.next(state, SILOS)
        report = context.last_report.rounds[0]
    for thread in threads + failing_threads:
        thread.join(timeout=60)
    assert not errors and not failing_errors, (errors, failing_errors)
    assert report["aggregated"] == ["a", "b"]
    assert "records are unreadable" in report["rejected"]["c"]
    assert_close(simulate(secure_process, state, arrays, ["a", "b"]), output)


def test_a_protocol_item_in_another_silos_name_or_malformed_is_no_answer():
    """A silo's items are input: the server forwards only messages of the item's phase sent in
    the item owner's own name."""
    from fedsim.core.secagg.messages import AdvertiseKeys

    advertised = AdvertiseKeys("b", bytes(32), bytes(32), bytes(64)).to_json()
    assert secure_round._well_formed("advertise", "b", advertised)
    assert not secure_round._well_formed("advertise", "a", advertised)  # a writing b's keys
    assert not secure_round._well_formed("shares", "b", advertised)  # the wrong kind for the phase
    assert not secure_round._well_formed("signature", "a", "not base64!")
    assert not secure_round._well_formed("advertise", "a", "{" * 10)


def test_distributed_dp_runs_under_secure_aggregation_and_the_handler_accounts_it(fresh, arrays):
    """Each silo clips, rotates, rounds and noises its update, then masks it: what the server can
    read of a silo is a masked vector spread over the whole modulus; the handler's ledger reports
    epsilon as the distributed discrete Gaussian's RDP bound for the three silos' noise shares."""
    import dp_accounting

    from fedsim import aggregators
    from fedsim.aggregators.distributed_dp import DistributedDpSumFactory, ddgauss_rdp

    factory = aggregators.UnweightedMeanFactory(
        DistributedDpSumFactory(noise_multiplier=1.0, expected_clients_per_round=3, l2_clip=0.5, bits=20))
    process = learning.build_unweighted_fed_avg(_model_fn, lambda: optimizers.build_sgdm(0.1), model_aggregator=factory)
    sigma, l2, l1, dim = aggregators.accounting.declared_distributed_mechanisms(process.initialize())[0]
    orders = list(dp_accounting.rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS)
    rdp = ddgauss_rdp(orders, sigma, len(SILOS), l2, l1, int(dim))
    expected = [dp_accounting.rdp.rdp_privacy_accountant.compute_epsilon(orders, rdp * r, 1e-5)[0] for r in (1, 2)]
    stack = fresh
    agents, errors, threads = _start(stack, arrays, SILOS, rounds=2)
    with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=120) as context:
        context.run_rounds(process, process.initialize(), SILOS, rounds=2, privacy_ledger=aggregators.PrivacyLedger(delta=1e-5))
        lineage = context.last_run
        form = context.form(process.next)
    for agent in agents:
        agent.stop()
    assert not errors, errors
    assert [r["round"] for r in lineage.rounds] == [1, 2]
    assert [r["metrics"]["privacy/epsilon"] for r in lineage.rounds] == pytest.approx(expected, abs=1e-9)
    layout = secure_round.SecureLayout.of(form.client_output_type, form.secure_bitwidths)
    objects, _ = _uploads(stack, lineage.run_id)
    bits = layout.modulus_bits(len(SILOS))
    for silo in SILOS:
        with np.load(io.BytesIO(objects[f"silos/{silo}/{lineage.run_id}/round-1/work.npz"])) as archive:
            masked = archive[sorted(archive.files)[-1]].astype(np.float64)
        assert abs(masked.mean() / 2**bits - 0.5) < 0.05  # spread over the whole modulus, not the noised input's range
        assert (masked >= 2**layout.value_bits).mean() > 0.6


def test_a_pinned_secure_layout_refuses_a_manifest_that_drops_it(fresh, arrays, secure_process, monkeypatch):
    """The silos pin the work with its secure layout; a server that sends the same work with the
    secure sums removed from the manifest (so the update would be uploaded in the clear) is
    refused by every silo, with the reason, and nothing of their updates is uploaded."""
    stack = fresh
    with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=120) as context:
        form = context.form(secure_process.next)
        pins = context.silo_computation_hashes(secure_process.next)
        bare = context._uploaded_phases(form)["work"]["sha256"]
        layout = [None if b is None else list(b) for b in form.secure_bitwidths]
        assert pins["work"] == hashlib.sha256(f"{bare}\nsecure_sums={json.dumps(layout, separators=(',', ':'))}".encode()).hexdigest()
        real_put = context.store.put_new

        def cheat(key, data, *args, **kwargs):  # the compromised server's manifest: no secure sums
            if key.endswith("manifest.json"):
                manifest = json.loads(data)
                manifest.pop("secure_sums", None)
                manifest.pop("secure_threshold", None)
                data = json.dumps(manifest).encode()
            return real_put(key, data, *args, **kwargs)

        monkeypatch.setattr(context.store, "put_new", cheat)
        agents, errors, threads = _start(stack, arrays, SILOS)
        for agent in agents:
            agent.accept = frozenset(pins.values())
        with pytest.raises(aws.context.RoundFailedError, match="not pinned without secure sums"):
            secure_process.next(secure_process.initialize(), SILOS)
        run_id = context.last_report.run_id
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    objects, items = _uploads(stack, run_id)
    assert not any(key.endswith(".npz") for key in objects), sorted(objects)
    assert review.run_pins(aws.store.Store(stack.config), run_id)["work"] == bare  # what a reviewer of this run would see
    refusals = [item["refused"] for item in items if "refused" in item]
    assert refusals, items  # the round fails at the first refusal; each silo that answered refused
    assert all("it is not pinned without secure sums (its output uploaded in the clear)" in reason for reason in refusals)


def _secure_metrics(finalizers, metrics_type):
    """A user's metrics aggregator: each unfinalized metric in thousandths, secure-summed."""
    import fedsim
    from fedsim.learning.metrics import finalize_metrics

    member = metrics_type.member if isinstance(metrics_type, fedsim.FederatedType) else metrics_type

    @fedsim.tf_computation(member)
    def encode(metrics):
        return tf.nest.map_structure(lambda v: tf.cast(tf.round(tf.cast(v, tf.float64) * 1000.0), tf.int64), metrics)

    encoded_type, leaves = encode.type_signature.result, fedsim.core.types.flatten_type(member)

    @fedsim.tf_computation(encoded_type)
    def finalize(total):
        totals = structure.flatten_value(total, encoded_type)
        return finalize_metrics(finalizers, structure.unflatten_value(
            member, [tf.cast(tf.cast(t, tf.float64) / 1000.0, leaf.dtype) for t, leaf in zip(totals, leaves)]))

    @fedsim.federated_computation(fedsim.FederatedType(member, fedsim.CLIENTS))
    def aggregate(metrics):
        return fedsim.federated_map(finalize, fedsim.federated_secure_sum_bitwidth(fedsim.federated_map(encode, metrics), 24))

    return aggregate


def test_secure_sums_in_an_evaluation_step_run_the_protocol_too(fresh, arrays):
    """An evaluation whose metrics go through a secure sum runs SecAgg like a training step (no
    flag): its metrics equal the simulation's, each silo wrote protocol messages for the
    evaluation step, and the evaluation work is pinned with its secure layout."""
    import fedsim
    from fedsim.aws import protocol
    from fedsim.core import context_stack
    from fedsim.simulation import metrics_managers

    process = learning.build_weighted_fed_avg(_model_fn, lambda: optimizers.build_sgdm(0.1))
    evaluate = learning.build_federated_evaluation(_model_fn, metrics_aggregator=_secure_metrics)
    initial = process.initialize()
    with context_stack.execution_context(fedsim.LocalExecutionContext()):
        from tests.aws.helpers import local_datasets

        trained = process.next(initial, local_datasets(arrays, SILOS)).state
        expected = metrics_managers.flatten_metrics({"evaluation": evaluate(process.get_model_weights(trained), local_datasets(arrays, SILOS))})
    stack = fresh
    agents, errors, threads = _start(stack, arrays, SILOS, rounds=2)
    with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=120) as context:
        context.run_rounds(process, initial, SILOS, rounds=1, evaluation=evaluate, eval_dataset="train")
        lineage = context.last_run
        pins = context.silo_computation_hashes(process, evaluate)
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    got = {k: v for k, v in lineage.rounds[0]["metrics"].items() if k.startswith("evaluation/")}
    assert got.keys() == expected.keys() and got
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, atol=1e-6)
    store = aws.store.Store(stack.config)
    evaluation_step = protocol.step_label(1, evaluation=True)
    for silo in SILOS:
        phases = {str(i["sk"]).rsplit("#", 1)[-1] for i in store.query_partition(silo) if f"#{evaluation_step}#sa#" in str(i["sk"])}
        assert {"advertise", "shares", "signature", "unmask"} <= phases, (silo, phases)
    manifest = store.get_json(f"runs/{lineage.run_id}/manifest.json")
    assert manifest["evaluation"]["secure_sums"]
    assert review.run_pins(store, lineage.run_id)["evaluation_work"] == pins["evaluation_work"]
    assert pins["evaluation_work"] != manifest["evaluation"]["phases"]["work"]["sha256"]  # the layout is pinned with it


def _cheating_server(monkeypatch, name, alter):
    """The handler (the server: its operator's code) publishes message `name` altered."""
    real_publish = secure_round.SecurePhases._publish

    def publish(self, message_name, document):
        return real_publish(self, message_name, alter(dict(document)) if message_name == name else document)

    monkeypatch.setattr(secure_round.SecurePhases, "_publish", publish)


def _swap_b_mask_key(directory):
    import base64

    entries = [dict(e) for e in directory["entries"]]
    for entry in entries:
        if entry["sender"] == "b":  # the server's own key in b's place, b's signature kept
            entry["mask_public"] = base64.b64encode(crypto.public_bytes(crypto.new_agreement_key())).decode()
    return dict(directory, entries=entries)


def _b_both_surviving_and_dropped(unmask):
    request = dict(unmask["request"], dropped=sorted(set(unmask["request"]["dropped"]) | {"b"}))
    return dict(unmask, request=request)


@pytest.mark.parametrize("name, alter, refusal", [
    ("directory", _swap_b_mask_key, "the keys listed for b are not signed by its pinned identity key"),
    ("unmask", _b_both_surviving_and_dropped, "the server lists b as both surviving and dropped"),
])
def test_a_cheating_server_is_refused_on_the_stack_with_the_silos_reasons(fresh, arrays, secure_process, monkeypatch,
                                                                          name, alter, refusal):
    """A server that swaps a silo's key in the directory, or asks for both secrets of one silo,
    gets no secret: the silos refuse, the round fails at once with their reasons, and no silo
    revealed a share of b's self-mask seed (b's masked input stays masked)."""
    _cheating_server(monkeypatch, name, alter)
    stack = fresh
    store = aws.store.Store(stack.config)

    def revealed():
        return {i["sk"] for silo in SILOS for i in store.query_partition(silo) if str(i["sk"]).endswith("#sa#unmask")}

    before = revealed()  # other tests' runs on this stack
    _, errors, threads = _start(stack, arrays, SILOS)
    started = time.monotonic()
    with aws.execution_context(stack, silos=SILOS, preprocess=batch, round_deadline_seconds=120):
        with pytest.raises(aws.RoundFailedError) as failure:
            secure_process.next(secure_process.initialize(), SILOS)
    assert time.monotonic() - started < 60  # not at the round's deadline
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    message = str(failure.value)
    assert "refused by" in message and refusal in message, message
    assert revealed() == before  # no silo revealed a share of anyone's secrets in this run
