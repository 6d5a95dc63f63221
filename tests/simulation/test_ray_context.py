"""The Ray context on a real two-node cluster on this machine (a head and a worker raylet, bound
to 127.0.0.1): FedAvg rounds equal the local context's bit for bit, client work runs on both
nodes, data opens on the workers, a killed actor and a removed node are survived, a client with
bad data fails the round by name, and a worker refuses a graph outside the op allowlist."""

import collections
import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray loads: loopback addresses only

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import ray  # noqa: E402
import tensorflow as tf  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

import fedsim  # noqa: E402
from fedsim import learning, simulation  # noqa: E402
from fedsim.core import op_allowlist, serialization  # noqa: E402
from fedsim.learning import optimizers  # noqa: E402
from fedsim.simulation import ray_context  # noqa: E402
from fedsim.simulation.datasets.client_data import ClientData  # noqa: E402

SPEC = collections.OrderedDict(x=tf.TensorSpec([None, 5], tf.float32), y=tf.TensorSpec([None], tf.int32))
IDS = [f"c{i:02d}" for i in range(9)]


def _arrays():
    rng = np.random.RandomState(0)
    return {cid: (rng.randn(n, 5).astype(np.float32), rng.randint(0, 3, n).astype(np.int32))
            for cid, n in zip(IDS, rng.randint(1, 25, len(IDS)))}


class _Clients(ClientData):
    """Clients' data made on whichever process opens it; `hook(client_id)` runs before each dataset."""

    def __init__(self, hook=None, log=None):
        self.arrays, self.hook = _arrays(), hook
        if log:
            with open(log, "a") as stream:
                stream.write(f"{os.getpid()}\n")

    @property
    def client_ids(self):
        return list(self.arrays)

    @property
    def element_type_structure(self):
        return SPEC

    def serializable_dataset_fn(self, client_id):
        if self.hook:
            self.hook(client_id)
        x, y = self.arrays[client_id]
        return tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=x, y=y)).batch(4)  # no shuffle: its order would follow each process's global seed

    def create_tf_dataset_for_client(self, client_id):
        return self.serializable_dataset_fn(client_id)


def _model_fn():
    keras.utils.set_random_seed(1)
    return learning.from_keras_model(keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)]),
                                     input_spec=SPEC, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                                     metrics=[keras.metrics.SparseCategoricalAccuracy()])


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False, "node_ip_address": "127.0.0.1"})
    worker = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster, worker
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def process():
    return learning.build_weighted_fed_avg(_model_fn, lambda: optimizers.build_sgdm(0.1))


def _assert_identical(first, second):
    for a, b in zip(tf.nest.flatten(first), tf.nest.flatten(second)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _local_rounds(process, datasets_for_round, rounds):
    state, outputs = process.initialize(), []
    with fedsim.execution_context(fedsim.LocalExecutionContext()):
        for r in range(rounds):
            output = process.next(state, datasets_for_round(r))
            state = output.state
            outputs.append(output)
    return outputs


def test_every_ray_process_listens_on_loopback_only(cluster):
    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}


def test_fed_avg_rounds_equal_the_local_context_bit_for_bit_with_client_work_on_both_nodes(cluster, process):
    clients = _Clients()
    datasets = lambda r: [clients.create_tf_dataset_for_client(c) for c in IDS[r:] + IDS[:r]]  # noqa: E731
    expected = _local_rounds(process, datasets, 2)
    context = simulation.RayExecutionContext(num_actors=3, clients_per_chunk=2)
    state = process.initialize()
    with fedsim.execution_context(context):
        for r in range(2):
            output = process.next(state, datasets(r))
            _assert_identical(expected[r], output)
            state = output.state
    assert context.last_round_nodes == {node["NodeID"] for node in ray.nodes() if node["Alive"]}  # head and worker
    assert {w["threads"] for w in context.last_round_workers} == {1}  # TensorFlow kept to the actor's one CPU
    assert sum(w["clients"] for w in context.last_round_workers) == len(IDS)
    context.shutdown()


def test_data_opened_on_the_workers_gives_the_same_rounds(cluster, process, tmp_path):
    log = str(tmp_path / "opened")
    clients = _Clients()
    expected = _local_rounds(process, lambda r: [clients.create_tf_dataset_for_client(c) for c in IDS], 1)
    source = simulation.WorkerClientData(lambda: _Clients(log=log))
    context = simulation.RayExecutionContext(num_actors=2)
    with fedsim.execution_context(context):
        output = process.next(process.initialize(), source.datasets(IDS))
    _assert_identical(expected[0], output)
    opened_in = {int(line) for line in open(log)}
    assert opened_in and os.getpid() not in opened_in  # create_tf_dataset_for_client ran on the actors
    context.shutdown()


def _fail_on_bad(client_id):
    if client_id == "c04":
        raise ValueError("corrupt record 17")


def test_a_client_whose_work_fails_fails_the_round_with_its_id_and_reason_without_retries(cluster, process):
    source = simulation.WorkerClientData(lambda: _Clients(hook=_fail_on_bad))
    context = simulation.RayExecutionContext(num_actors=2)
    with fedsim.execution_context(context), pytest.raises(simulation.ClientWorkError, match=r"c04.*corrupt record 17"):
        process.next(process.initialize(), source.datasets(IDS))
    assert context.failures_survived == 0
    context.shutdown()


def test_an_actor_killed_mid_round_is_replaced_and_the_round_is_unchanged(cluster, process, tmp_path):
    marker = str(tmp_path / "killed-once")

    def die_once(client_id):
        if client_id == "c05" and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # the actor's process dies in the middle of its chunk

    clients = _Clients()
    expected = _local_rounds(process, lambda r: [clients.create_tf_dataset_for_client(c) for c in IDS], 1)
    source = simulation.WorkerClientData(lambda: _Clients(hook=die_once))
    context = simulation.RayExecutionContext(num_actors=2, clients_per_chunk=3)
    with fedsim.execution_context(context):
        output = process.next(process.initialize(), source.datasets(IDS))
    assert os.path.exists(marker) and context.failures_survived == 1
    _assert_identical(expected[0], output)
    context.shutdown()


def test_a_worker_refuses_a_graph_outside_the_op_allowlist(cluster):
    @fedsim.tf_computation(tf.string)
    def reads(path):
        return tf.io.read_file(path)  # a file of the worker's: not an op a client's work may run

    data = serialization.serialize_computation(reads)
    worker = ray_context._ClientWorker(1)
    with pytest.raises(op_allowlist.DisallowedOpError, match="ReadFile"):
        worker._load(serialization.computation_hash(data), [ray.put([data, data, data])])


def test_a_node_removed_between_rounds_leaves_the_run_on_the_head(cluster, process):
    """Last in the module: it takes the worker node away."""
    cluster_object, worker_node = cluster
    clients = _Clients()
    datasets = lambda r: [clients.create_tf_dataset_for_client(c) for c in IDS]  # noqa: E731
    expected = _local_rounds(process, datasets, 2)
    context = simulation.RayExecutionContext(num_actors=2, clients_per_chunk=2)
    state = process.initialize()
    with fedsim.execution_context(context):
        output = process.next(state, datasets(0))
        assert len(context.last_round_nodes) == 2
        cluster_object.remove_node(worker_node)
        output = process.next(output.state, datasets(1))
    _assert_identical(expected[1], output)
    head = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert context.last_round_nodes == head and context.failures_survived >= 1
    context.shutdown()


def test_a_node_lost_mid_round_has_its_clients_retrained_on_the_head(cluster, process, tmp_path):
    """After the previous test: a fresh worker node joins; a client on it stalls, the node is
    removed while the round runs, and the round completes on the head with the same result."""
    import threading

    cluster_object, _ = cluster
    fresh = cluster_object.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster_object.wait_for_nodes()
    marker = str(tmp_path / "stalled")
    worker_node = fresh.node_id

    def stall_on_the_worker_node(client_id):
        if ray.get_runtime_context().get_node_id() == worker_node:
            open(marker, "w").close()
            import time
            time.sleep(120)  # until the node is taken away

    clients = _Clients()
    expected = _local_rounds(process, lambda r: [clients.create_tf_dataset_for_client(c) for c in IDS], 1)
    source = simulation.WorkerClientData(lambda: _Clients(hook=stall_on_the_worker_node))
    context = simulation.RayExecutionContext(num_actors=2, clients_per_chunk=3)
    outcome = {}

    def run():
        with fedsim.execution_context(context):
            outcome["output"] = process.next(process.initialize(), source.datasets(IDS))

    runner = threading.Thread(target=run)
    runner.start()
    for _ in range(600):
        if os.path.exists(marker) or not runner.is_alive():
            break
        runner.join(0.1)
    assert os.path.exists(marker), "no client ran on the worker node"
    cluster_object.remove_node(fresh)
    runner.join(180)
    assert "output" in outcome
    _assert_identical(expected[0], outcome["output"])
    assert context.failures_survived >= 1 and worker_node not in context.last_round_nodes
    context.shutdown()


def test_actors_the_cluster_cannot_place_fail_with_the_resources_asked_not_a_hang(cluster, process):
    """The cluster has at most three CPUs: two actors of two CPUs each cannot both be placed."""
    import time

    context = simulation.RayExecutionContext(num_actors=2, cpus_per_actor=2.0, actor_start_seconds=3.0)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"[12] of 2 actors could not be placed within 3s: each asks for 2 CPU, 0 GPU; "
                                           r"the cluster has \d+ CPU, 0 GPU in all"):
        with fedsim.execution_context(context):
            process.next(process.initialize(), [_Clients().create_tf_dataset_for_client(IDS[0])])
    assert time.monotonic() - started < 60
    assert context._actors == []  # nothing kept: the next call tries again
