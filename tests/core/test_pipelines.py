"""A client's pipeline read without a tf.data iterator gives what one iteration of it gives, and
reads without tf.data exactly the steps it claims to (the rest is iterated by tf.data)."""

import collections

import numpy as np
import pytest
import tensorflow as tf

import fedsim
from fedsim.core import pipelines
from fedsim.core import sequences
from fedsim.core import tf_private

ELEMENT = fedsim.to_type(collections.OrderedDict(x=tf.TensorSpec([None, 3], tf.float32), y=tf.TensorSpec([None], tf.int32)))


def _base(n=23, seed=0):
    rng = np.random.RandomState(seed)
    return tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
        x=rng.randn(n, 3).astype(np.float32), y=rng.randint(0, 5, n).astype(np.int32)))


def _format(batch):
    return collections.OrderedDict(x=tf.reshape(batch["x"] * 2.0, [-1, 3]), y=tf.reshape(batch["y"], [-1]))


def _iterated(dataset):
    return [tf.nest.flatten(element) for element in dataset]


def _read(dataset):
    """(elements as pipelines reads them, the datasets it had tf.data compute: iterated or stacked)."""
    handed = []

    def iterate(part):
        handed.append(("iterated", part))
        return _iterated(part)

    stacked = pipelines._Reader.stacked

    def stacked_spy(reader, part):
        rows = stacked(reader, part)
        if rows is not None:
            handed.append(("stacked", part))
        return rows

    pipelines._Reader.stacked = stacked_spy
    try:
        read = pipelines.elements(dataset, iterate, 2**30)
    finally:
        pipelines._Reader.stacked = stacked
    return (read if isinstance(read, list) else read.as_list()), handed


def _assert_same(read, expected):
    assert len(read) == len(expected)
    for got, want in zip(read, expected):
        assert [np.asarray(g).tolist() for g in got] == [np.asarray(w).tolist() for w in want]
        assert [np.asarray(g).dtype for g in got] == [np.asarray(w).dtype for w in want]


# name: (a fresh dataset, what tf.data computes: None for nothing, else how and the kind of step)
CASES = {
    "bare, uneven last batch": (lambda: _base().batch(5), None),
    "drop_remainder": (lambda: _base().batch(5, drop_remainder=True), None),
    "tutorial: shuffle(seed) batch map prefetch": (lambda: _base().shuffle(10, seed=3).batch(4).map(_format).prefetch(2), "stacked other"),
    "repeat(3) shuffle batch": (lambda: _base(7).repeat(3).shuffle(8, seed=1).batch(4), "stacked other"),
    "repeat(2) batch map": (lambda: _base(7).repeat(2).batch(3).map(_format), None),
    "batch map repeat(2)": (lambda: _base(7).batch(3).map(_format).repeat(2), None),
    "take skip over batches": (lambda: _base().batch(2).skip(2).take(4).map(_format), None),
    "take skip over examples": (lambda: _base().skip(3).take(11).batch(4), None),
    "filter that empties the client": (lambda: _base().batch(3).filter(lambda b: tf.reduce_min(b["y"]) > 99), None),
    "batch then filter": (lambda: _base(30).batch(4).filter(lambda b: tf.reduce_sum(b["y"]) % 2 == 0), None),
    "zero examples": (lambda: _base(0).batch(3).map(_format), None),
    "cache prefetch options": (lambda: _base().batch(6).cache().prefetch(1).with_options(tf.data.Options()), None),
    "map before batch": (lambda: _base().map(lambda e: e).batch(4), None),
    "padded_batch": (lambda: _base().padded_batch(4), "iterated other"),
    "interleave": (lambda: tf.data.Dataset.range(3).interleave(lambda i: _base(5), cycle_length=2).batch(4), "iterated batch"),
    "unbatched shuffle": (lambda: _base().shuffle(10, seed=2), "stacked other"),
    "filter under batch": (lambda: _base().filter(lambda e: e["y"] > 1).batch(4), "iterated batch"),
    "stateful map": (lambda: _base().batch(5).map(lambda b: collections.OrderedDict(
        x=b["x"] + tf.random.stateless_uniform([3], [1, 2]), y=b["y"] + tf.cast(tf.random.uniform([]) * 0, tf.int32))), "iterated map"),
    "shuffled then cached": (lambda: _base().shuffle(10, seed=3).cache().batch(4), "stacked cache"),
    "map to examples of varying length": (lambda: _base(9).map(lambda e: tf.range(e["y"])), None),
    "map to batches of varying width": (lambda: _base(11).batch(4).map(
        lambda b: tf.zeros([tf.shape(b["y"])[0], tf.reduce_max(b["y"]) + 1]) + tf.cast(b["y"][:, None], tf.float32)), None),
    "map of full batches (drop_remainder)": (lambda: _base(11).batch(4, drop_remainder=True).map(_format), None),
    "map to strings over an uneven last batch": (lambda: _base(10).batch(4).map(
        lambda b: tf.strings.as_string(b["y"])), None),
    "two maps": (lambda: _base(10).batch(4).map(_format).map(_format), None),
    "map batch map": (lambda: _base(13).map(_format_example).batch(5).map(_format), None),
    "map, then take and filter the mapped batches": (lambda: _base(20).batch(3).map(_format).take(5).filter(
        lambda b: tf.reduce_sum(b["y"]) % 2 == 0), None),
    "shuffle batch map, then skip": (lambda: _base(20).shuffle(8, seed=6).batch(3).map(_format).skip(2), "stacked other"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_pipeline_reads_as_one_iteration_of_it(name):
    make, handed_kind = CASES[name]
    read, handed = _read(make())
    if name != "stateful map":  # tf.random.uniform: no two iterations agree
        _assert_same(read, _iterated(make()))
    if handed_kind is None:
        assert handed == []
    else:
        assert len(handed) == 1
        how, part = handed[0]
        step = tf_private.dataset_step(part)
        assert f"{how} {step.kind if step else 'other'}" == handed_kind  # other: a step the adapter does not name


def test_a_reshuffling_dataset_reads_as_its_next_iteration():
    """Read twice, a dataset that reshuffles gives its first then its second order, as tf.data would."""
    dataset = _base(40).shuffle(40, seed=5).batch(8).map(_format)
    twin = _base(40).shuffle(40, seed=5).batch(8).map(_format)
    first, second = _read(dataset)[0], _read(dataset)[0]
    _assert_same(first, _iterated(twin))
    _assert_same(second, _iterated(twin))
    assert [np.asarray(e[1]).tolist() for e in first] != [np.asarray(e[1]).tolist() for e in second]


def test_the_same_preprocessing_traced_per_client_is_one_function():
    clients = [_base(9, seed).batch(4).map(_format) for seed in range(6)]  # six traces of _format
    traced = [tf_private.dataset_step(client).function for client in clients]
    assert len({id(f) for f in traced}) == 6
    assert len({id(pipelines._shared_function(f)) for f in traced}) == 1
    for client in clients:
        assert _read(client)[1] == []


def test_functions_that_differ_only_in_what_they_capture_or_their_shapes_are_not_shared():
    offsets = [tf.constant(1.0), tf.constant(100.0)]
    for offset in offsets:  # the same definition, different captured tensors
        dataset = _base(6).batch(4).map(lambda b, offset=offset: collections.OrderedDict(x=b["x"] + offset, y=b["y"]))
        _assert_same(_read(dataset)[0], _iterated(dataset))
    for width in (3, 5):  # the same Python function over other shapes
        data = tf.data.Dataset.from_tensor_slices(np.arange(4 * width, dtype=np.float32).reshape(4, width)).batch(3)
        dataset = data.map(lambda b: tf.reshape(b * 2.0, [-1, width]))
        _assert_same(_read(dataset)[0], _iterated(dataset))


def test_without_the_adapter_every_pipeline_is_iterated_and_right(monkeypatch):
    monkeypatch.setattr(tf_private, "dataset_step", lambda dataset: None)
    for name, (make, _) in CASES.items():
        if name == "stateful map":
            continue
        read, handed = _read(make())
        assert len(handed) == 1 and handed[0][1].element_spec == make().element_spec  # the whole dataset, by tf.data
        _assert_same(read, _iterated(make()))


def test_a_pipeline_over_the_budget_is_refused_before_it_is_built():
    dataset = _base(1000).repeat(50).batch(10)  # 16 bytes a row: 800 KB repeated
    with pytest.raises(pipelines.OverBudget):
        pipelines.elements(dataset, _iterated, 100_000)
    assert sequences.materialize(dataset, ELEMENT, budget_bytes=100_000) is None
    assert sequences.materialize(_base(1000).batch(10), ELEMENT, budget_bytes=100_000) is not None


def test_an_error_in_a_map_function_surfaces_as_tf_data_raises_it():
    dataset = _base(8).batch(4).map(lambda b: collections.OrderedDict(
        x=tf.reshape(b["x"], [4, 3]), y=b["y"]))  # fine for full batches only
    assert len(_read(dataset)[0]) == 2
    uneven = _base(9).batch(4).map(lambda b: collections.OrderedDict(x=tf.reshape(b["x"], [4, 3]), y=b["y"]))
    with pytest.raises(tf.errors.InvalidArgumentError):
        _read(uneven)
    with pytest.raises(tf.errors.InvalidArgumentError):
        _iterated(uneven)


def test_batching_mapped_examples_of_differing_shapes_fails_as_tf_data_fails():
    dataset = _base(9).map(lambda e: tf.range(e["y"])).batch(2)
    with pytest.raises(tf.errors.InvalidArgumentError):
        _iterated(dataset)
    with pytest.raises(tf.errors.InvalidArgumentError):
        _read(dataset)


def test_a_map_is_laid_out_in_one_call_not_per_element(monkeypatch):
    """The map over a client's batches runs once per batch inside one traced call; no call per
    element (a call costs ~0.3 ms whatever it computes)."""
    calls = []
    call_each = pipelines.SharedFunction.call_each
    monkeypatch.setattr(pipelines.SharedFunction, "call_each", lambda self, items: calls.append(len(items)) or call_each(self, items))
    dataset = _base(23).shuffle(10, seed=4).batch(4).map(_format)
    read, handed = _read(dataset)
    _assert_same(read, _iterated(_base(23).shuffle(10, seed=4).batch(4).map(_format)))
    assert calls == [] and [how for how, _ in handed] == ["stacked"]


def test_two_threads_reading_a_map_under_a_shuffle_finish_with_tf_datas_elements():
    """tf.data runs a map under a shuffle with its executor's runner: read on an executor without
    one (single-threaded), two readers at once waited forever (a tutorial's rounds hung)."""
    import threading

    def make(seed):
        return _base(40, seed).map(_format_example).shuffle(16, seed=seed).batch(6)

    results, errors = {}, []

    def read_all(worker):
        try:
            for seed in range(worker, 24, 2):
                results[seed] = _read(make(seed))[0]
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=read_all, args=(k,), daemon=True) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a reader never finished"
    assert not errors and sorted(results) == list(range(24))
    for seed, read in results.items():
        _assert_same(read, _iterated(make(seed)))


def _format_example(example):
    return collections.OrderedDict(x=tf.reshape(example["x"], [3]) * 2.0, y=example["y"])
