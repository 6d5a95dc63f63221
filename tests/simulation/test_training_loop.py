"""Sampling, metrics managers, program state, and run_training_process (with a real kill + resume)."""

import collections
import csv
import os
import re
import pathlib
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from fedsim import learning, simulation
from fedsim.learning import optimizers

SCRIPT = pathlib.Path(__file__).with_name("training_script.py")


def test_uniform_sampling_is_reproducible_per_round():
    ids = [f"c{i}" for i in range(50)]
    sample = simulation.build_uniform_sampling_fn(ids, random_seed=3)
    again = simulation.build_uniform_sampling_fn(ids, random_seed=3)
    cohorts = [sample(r, 10) for r in range(1, 6)]
    assert [again(r, 10) for r in reversed(range(1, 6))] == cohorts[::-1]  # independent of call order
    assert all(len(set(c)) == 10 and set(c) <= set(ids) for c in cohorts)
    assert len({tuple(c) for c in cohorts}) == 5
    assert simulation.build_uniform_sampling_fn(ids, random_seed=4)(1, 10) != cohorts[0]
    # Every client is picked about equally often over many rounds.
    counts = collections.Counter(i for r in range(2000) for i in sample(r, 10))
    assert max(counts.values()) / min(counts.values()) < 1.4
    with pytest.raises(ValueError, match="cannot sample 51 distinct clients out of 50"):
        sample(1, 51)
    assert len(simulation.build_uniform_sampling_fn(ids, replace=True, random_seed=0)(1, 80)) == 80
    with pytest.raises(ValueError, match="empty"):
        simulation.build_uniform_sampling_fn([])


def test_csv_metrics_manager(tmp_path):
    path = tmp_path / "run" / "metrics.csv"
    manager = simulation.CSVMetricsManager(str(path))
    manager.release({"training": {"loss": np.float32(2.5), "note": "text is skipped"}}, 1)
    manager.release({"training": {"loss": 2.0}, "evaluation": {"accuracy": np.float64(0.5)}}, 2)
    manager.release({"training": {"loss": 1.5}}, 3)
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [r["round_num"] for r in rows] == ["1", "2", "3"]
    assert [float(r["training/loss"]) for r in rows] == [2.5, 2.0, 1.5]
    assert [r["evaluation/accuracy"] for r in rows] == ["", "0.5", ""]
    reopened = simulation.CSVMetricsManager(str(path))  # a resumed run reads what is there
    reopened.clear_metrics(3)
    assert [r["round_num"] for r in reopened.get_metrics()] == ["1", "2"]


def test_tensorboard_metrics_manager(tmp_path):
    manager = simulation.TensorBoardMetricsManager(str(tmp_path))
    for round_num, loss in ((1, 2.5), (2, 2.0)):
        manager.release({"training": {"loss": loss, "count": 7}}, round_num)
    seen = collections.defaultdict(dict)
    for event_file in tmp_path.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            for value in event.summary.value:
                seen[value.tag][event.step] = float(tf.make_ndarray(value.tensor))
    assert seen["training/loss"] == {1: 2.5, 2: 2.0}
    assert seen["training/count"] == {1: 7.0, 2: 7.0}


def test_tensorboard_shows_each_round_once_after_a_resume(tmp_path):
    manager = simulation.TensorBoardMetricsManager(str(tmp_path))
    for round_num in (1, 2, 3, 4):
        manager.release({"loss": float(round_num)}, round_num)
    resumed = simulation.TensorBoardMetricsManager(str(tmp_path))  # a new process after a crash; state saved at 2
    resumed.clear_metrics(3)
    for round_num in (3, 4, 5):
        resumed.release({"loss": 10.0 * round_num}, round_num)
    steps = collections.defaultdict(list)
    for event_file in tmp_path.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            for value in event.summary.value:
                steps[event.step].append(float(tf.make_ndarray(value.tensor)))
    assert dict(steps) == {1: [1.0], 2: [2.0], 3: [30.0], 4: [40.0], 5: [50.0]}


def _model_fn():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    return learning.from_keras_model(
        model,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        input_spec=collections.OrderedDict(x=tf.TensorSpec([None, 4], tf.float32), y=tf.TensorSpec([None], tf.int32)),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )


@pytest.fixture(scope="module")
def small_run():
    rng = np.random.RandomState(0)
    client_data = simulation.datasets.TestClientData({
        f"c{i}": collections.OrderedDict(x=rng.randn(12, 4).astype(np.float32), y=rng.randint(0, 3, 12).astype(np.int32)) for i in range(6)
    }).preprocess(lambda ds: ds.batch(4))
    process = learning.build_weighted_fed_avg(
        _model_fn, lambda: optimizers.build_sgdm(0.1), server_optimizer_fn=lambda: optimizers.build_adam(0.01)
    )
    evaluation = learning.build_federated_evaluation(_model_fn)
    return client_data, process, evaluation


def test_program_state_round_trip(small_run, tmp_path):
    client_data, process, _ = small_run
    state = process.next(process.initialize(), [client_data.create_tf_dataset_for_client("c0")]).state
    manager = simulation.FileProgramStateManager(str(tmp_path), keep_total=2)
    assert manager.load_latest(process.initialize()) == (None, 0)
    for version in (1, 2, 3):
        manager.save(state, version)
    assert manager.versions() == [2, 3]
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]
    loaded, version = manager.load_latest(process.initialize())
    assert version == 3 and type(loaded) is type(state)
    for saved_leaf, leaf in zip(tf.nest.flatten(loaded), tf.nest.flatten(state)):
        np.testing.assert_array_equal(saved_leaf, leaf)
    # The loaded state runs, and gives what the original gives.
    datasets = [client_data.create_tf_dataset_for_client("c1")]
    a, b = process.next(loaded, datasets).state, process.next(state, datasets).state
    for x, y in zip(process.get_model_weights(a).trainable, process.get_model_weights(b).trainable):
        np.testing.assert_array_equal(x, y)
    other = learning.build_weighted_fed_avg(_model_fn, lambda: optimizers.build_sgdm(0.1))  # no Adam state
    with pytest.raises(simulation.ProgramStateError, match="leaves"):
        manager.load_latest(other.initialize())
    (tmp_path / "program_state_9.npz").write_bytes(b"torn")
    with pytest.raises(simulation.ProgramStateError, match="program_state_9.npz: cannot read"):
        manager.load_latest(process.initialize())


def test_run_training_process_with_evaluation_and_managers(small_run, tmp_path, capsys):
    client_data, process, evaluation = small_run
    sample = simulation.build_uniform_sampling_fn(client_data.client_ids, random_seed=1)
    evaluated = []

    def evaluation_fn(state, data):
        evaluated.append(len(data))
        return evaluation(process.get_model_weights(state), data)

    history = simulation.History()
    final = simulation.run_training_process(
        process,
        lambda r: [client_data.create_tf_dataset_for_client(i) for i in sample(r, 3)],
        total_rounds=5,
        evaluation_fn=evaluation_fn,
        evaluation_selection_fn=lambda r: [client_data.create_tf_dataset_for_client(i) for i in client_data.client_ids[:2]],
        rounds_per_evaluation=2,
        metrics_managers=[simulation.CSVMetricsManager(str(tmp_path / "m.csv"))],
        callbacks=[history],
        verbose=1,
    )
    assert evaluated == [2, 2, 2]  # rounds 2, 4 and the last
    rows = simulation.CSVMetricsManager(str(tmp_path / "m.csv")).get_metrics()
    assert [r["round_num"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert [bool(r["evaluation/eval/loss"]) for r in rows] == [False, True, False, True, True]
    assert float(rows[-1]["training/client_work/train/loss"]) > 0
    # The same rounds by hand give the same final weights.
    state = process.initialize()
    for r in range(1, 6):
        state = process.next(state, [client_data.create_tf_dataset_for_client(i) for i in sample(r, 3)]).state
    for x, y in zip(process.get_model_weights(final).trainable, process.get_model_weights(state).trainable):
        np.testing.assert_array_equal(x, y)
    # The history holds what the CSV holds, round by round (None where a round had no evaluation).
    assert history.rounds == [1, 2, 3, 4, 5]
    assert [f"{v:.6g}" for v in history.history["training/client_work/train/loss"]] == \
        [f"{float(r['training/client_work/train/loss']):.6g}" for r in rows]
    assert [v is not None for v in history.history["evaluation/eval/loss"]] == [False, True, False, True, True]
    shown = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)  # Keras' progress bar, colours removed
    assert "5/5" in shown and "loss:" in shown and "accuracy:" in shown and "/round" in shown
    simulation.run_training_process(process, lambda r: [client_data.create_tf_dataset_for_client("c0")], 2, verbose=0)
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="give both or neither"):
        simulation.run_training_process(process, lambda r: [], 2, evaluation_fn=evaluation_fn)
    with pytest.raises(ValueError, match="total_rounds"):
        simulation.run_training_process(process, lambda r: [], 0)


def test_early_stopping_ends_the_run_and_saves_the_state(small_run, tmp_path):
    client_data, process, _ = small_run
    losses = iter([3.0, 2.0, 2.5, 2.4, 1.0, 0.5])
    seen = []

    class FakeLoss(simulation.Callback):  # a metric with a known course, to check the stopping rule
        def on_round_end(self, round_num, metrics):
            seen.append(round_num)
            metrics["fake/loss"] = next(losses)

    stop = simulation.EarlyStopping("fake/loss", patience=1)
    manager = simulation.FileProgramStateManager(str(tmp_path), keep_total=0)
    simulation.run_training_process(process, lambda r: [client_data.create_tf_dataset_for_client("c0")], 6,
                                    program_state_manager=manager, callbacks=[FakeLoss(), stop], verbose=0)  # callbacks share the round's metrics dict
    assert seen == [1, 2, 3] and stop.stopped_round == 3  # 2.0 at round 2, then a round without improvement (Keras' rule)
    assert "did not improve on 2 for 1 round(s)" in stop.reason
    assert max(manager.versions()) == 3  # the stopped round's state is saved
    with pytest.raises(ValueError, match="mode"):
        simulation.EarlyStopping("x", mode="lowest")


def _start(state_dir, out_path, seconds_per_round):
    env = dict(os.environ, STATE_DIR=str(state_dir), OUT_PATH=str(out_path), SECONDS_PER_ROUND=str(seconds_per_round),
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH="")
    return subprocess.Popen([sys.executable, str(SCRIPT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    clean = _start(clean_dir, tmp_path / "clean.npz", 0)
    victim = _start(killed_dir, tmp_path / "never.npz", 1.0)
    deadline = time.time() + 240
    while not (killed_dir / "program_state_3.npz").exists():
        assert victim.poll() is None, victim.communicate()[1].decode()[-3000:]
        assert time.time() < deadline, "the run never reached round 3"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    saved = simulation.FileProgramStateManager(str(killed_dir), keep_total=0).versions()
    assert 3 in saved and 6 not in saved and not (tmp_path / "never.npz").exists()

    resumed = _start(killed_dir, tmp_path / "resumed.npz", 0)
    logs = []
    for process in (clean, resumed):
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr.decode()[-3000:]
        logs.append(stdout.decode())
    rounds_shown = [int(n) for n in re.findall(r"\b(\d+)/6\b", re.sub(r"\x1b\[[0-9;]*m", "", logs[1]))]
    assert rounds_shown[0] == max(saved) and rounds_shown[-1] == 6  # it counts from the saved round, not from 1
    with np.load(tmp_path / "clean.npz") as a, np.load(tmp_path / "resumed.npz") as b:
        assert len(a.files) == len(b.files) == 2
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
    rows = simulation.CSVMetricsManager(str(killed_dir / "metrics.csv")).get_metrics()
    assert [r["round_num"] for r in rows] == ["1", "2", "3", "4", "5", "6"]  # no round twice, none lost
