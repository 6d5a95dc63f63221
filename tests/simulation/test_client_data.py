"""ClientData: in-memory and SQLite (TFF's format), the published-dataset loaders, LEAF synthetic."""

import collections
import os
import sqlite3

import numpy as np
import pytest
import tensorflow as tf

import fedsim
from fedsim.simulation import datasets
from fedsim.simulation.datasets import ClientData, TestClientData


def _elements(dataset):
    return [tf.nest.map_structure(np.asarray, e) for e in dataset]


def _assert_same_elements(first, second):
    first, second = _elements(first), _elements(second)
    assert len(first) == len(second)
    for a, b in zip(first, second):
        tf.nest.map_structure(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.RandomState(0)
    return {
        f"c{i}": collections.OrderedDict(x=rng.randn(2 + i, 3).astype(np.float32), y=rng.randint(0, 5, 2 + i).astype(np.int32))
        for i in range(5)
    }


def test_in_memory_client_data(arrays):
    data = TestClientData(arrays)
    assert data.client_ids == list(arrays)
    assert data.element_type_structure == collections.OrderedDict(x=tf.TensorSpec([3], tf.float32), y=tf.TensorSpec([], tf.int32))
    for client_id, expected in arrays.items():
        elements = _elements(data.create_tf_dataset_for_client(client_id))
        np.testing.assert_array_equal(np.stack([e["x"] for e in elements]), expected["x"])
        # The serializable path (graph constants + id lookup) gives the same elements.
        _assert_same_elements(data.dataset_computation(client_id), data.create_tf_dataset_for_client(client_id))


def test_dataset_computation_runs_from_bytes(arrays):
    data = TestClientData(arrays).preprocess(lambda ds: ds.batch(2))
    restored = fedsim.deserialize_computation(fedsim.serialize_computation(data.dataset_computation))
    assert restored.type_signature.result == data.dataset_computation.type_signature.result
    _assert_same_elements(restored("c3"), data.create_tf_dataset_for_client("c3"))


def test_preprocess_reads_nothing_until_asked(arrays):
    reads = []

    class CountingClientData(TestClientData):
        def _dataset_for_known_client(self, client_id):
            reads.append(client_id)
            return super()._dataset_for_known_client(client_id)

    base = CountingClientData(arrays)
    base._element_spec_cache = TestClientData(arrays).element_type_structure  # the base spec, known up front
    data = base.preprocess(lambda dataset: dataset.map(lambda e: (e["x"] * 2, e["y"])).batch(4))
    spec = data.element_type_structure
    assert spec == (tf.TensorSpec([None, 3], tf.float32), tf.TensorSpec([None], tf.int32))
    assert reads == []  # preprocessing and its element spec read no client's data
    x, _ = next(iter(data.create_tf_dataset_for_client("c4")))
    assert reads == ["c4"]  # one client asked for, one client read
    np.testing.assert_allclose(x, arrays["c4"]["x"][:4] * 2)


def test_all_clients_split_and_from_fn(arrays):
    data = TestClientData(arrays)
    everything = _elements(data.create_tf_dataset_from_all_clients(seed=3))
    assert len(everything) == sum(len(a["y"]) for a in arrays.values())
    assert sorted(e["x"].sum() for e in everything) == pytest.approx(sorted(np.concatenate([a["x"] for a in arrays.values()]).sum(1)))
    train, test = ClientData.train_test_client_split(data, 2, seed=1)
    assert len(test.client_ids) == 2 and sorted(train.client_ids + test.client_ids) == sorted(arrays)
    assert ClientData.train_test_client_split(data, 2, seed=1)[1].client_ids == test.client_ids  # reproducible
    _assert_same_elements(test.create_tf_dataset_for_client(test.client_ids[0]), data.create_tf_dataset_for_client(test.client_ids[0]))
    with pytest.raises(ValueError, match="unknown client id"):
        test.create_tf_dataset_for_client(train.client_ids[0])

    def make(client_id):
        length = tf.strings.to_number(tf.strings.substr(client_id, 1, 1), tf.int64)
        return tf.data.Dataset.range(length)

    ranged = ClientData.from_clients_and_tf_fn(["n2", "n5"], make)
    assert [len(_elements(ranged.create_tf_dataset_for_client(i))) for i in ranged.client_ids] == [2, 5]
    assert len(_elements(ranged.dataset_computation("n5"))) == 5


def test_client_data_bad_input(arrays):
    data = TestClientData(arrays)
    with pytest.raises(ValueError, match="unknown client id 'nobody' \\(there are 5 clients\\)"):
        data.create_tf_dataset_for_client("nobody")
    with pytest.raises(ValueError, match="^ClientData: unknown client id 'nobody'"):  # no internal class name
        data.preprocess(lambda dataset: dataset.batch(2)).create_tf_dataset_for_client("nobody")
    with pytest.raises(TypeError, match="client id is a str"):
        data.create_tf_dataset_for_client(3)
    with pytest.raises(ValueError, match="empty"):
        TestClientData({})
    with pytest.raises(ValueError, match="different lengths"):
        TestClientData({"a": {"x": np.zeros(3), "y": np.zeros(2)}})
    with pytest.raises(ValueError, match="different structure"):
        TestClientData({"a": {"x": np.zeros(3)}, "b": {"z": np.zeros(3)}})
    with pytest.raises(ValueError, match="num_test_clients"):
        ClientData.train_test_client_split(data, 5)


# --- TFF's SQLite format ---------------------------------------------------------------------


def _emnist_splits(rng, clients=4):
    return {
        split: {
            f"f{i:04d}_{split[:3]}": {"pixels": rng.rand(3 + i, 28, 28).astype(np.float32), "label": rng.randint(0, 10, 3 + i)}
            for i in range(clients)
        }
        for split in ("digits_only_train", "digits_only_test", "all_train", "all_test")
    }


@pytest.fixture(scope="module")
def emnist_dir(tmp_path_factory):
    """A small emnist_all.sqlite.lzma, published form only (no index, compressed)."""
    directory = tmp_path_factory.mktemp("emnist")
    splits = _emnist_splits(np.random.RandomState(1))
    database = datasets.write_sqlite(str(directory / "emnist_all.sqlite"), splits, index=False)
    datasets.compress_lzma(database)
    os.remove(database)
    return directory, splits


def test_emnist_loader_reads_the_published_format(emnist_dir):
    directory, splits = emnist_dir
    train, test = datasets.emnist.load_data(only_digits=True, cache_dir=str(directory))
    assert (directory / "emnist_all.sqlite").exists()  # decompressed once, beside the .lzma
    assert train.element_type_structure == collections.OrderedDict(
        label=tf.TensorSpec([], tf.int32), pixels=tf.TensorSpec([28, 28], tf.float32)
    )
    assert train.client_ids == sorted(splits["digits_only_train"]) and test.client_ids == sorted(splits["digits_only_test"])
    for client_id, expected in splits["digits_only_train"].items():
        elements = _elements(train.create_tf_dataset_for_client(client_id))
        np.testing.assert_array_equal(np.stack([e["pixels"] for e in elements]), expected["pixels"])
        np.testing.assert_array_equal([e["label"] for e in elements], expected["label"])
        assert elements[0]["label"].dtype == np.int32
    _assert_same_elements(train.dataset_computation(train.client_ids[2]), train.create_tf_dataset_for_client(train.client_ids[2]))
    all_train, _ = datasets.emnist.load_data(only_digits=False, cache_dir=str(directory))
    assert all_train.client_ids == sorted(splits["all_train"])


def test_a_client_read_uses_the_index(emnist_dir):
    """Lazy: the query for one client is an index search, not a scan of the table."""
    directory, _ = emnist_dir
    train, _ = datasets.emnist.load_data(cache_dir=str(directory))
    sql = datasets.SqlClientData(str(directory / "emnist_all.sqlite"), "digits_only_train")
    plan = " ".join(str(row) for row in sql._connection.execute("EXPLAIN QUERY PLAN " + sql._query(), ("x", "digits_only_train")))
    assert "USING INDEX" in plan and "SCAN examples" not in plan, plan
    assert sql.num_examples(train.client_ids[1]) == 4


def test_env_variable_and_missing_file(emnist_dir, tmp_path, monkeypatch):
    directory, _ = emnist_dir
    monkeypatch.setenv("FEDSIM_DATA_DIR", str(directory))
    train, _ = datasets.emnist.load_data()
    assert len(train.client_ids) == 4
    with pytest.raises(FileNotFoundError) as error:
        datasets.cifar100.load_data(cache_dir=str(tmp_path))
    message = str(error.value)
    assert str(tmp_path / "cifar100.sqlite.lzma") in message
    assert "https://storage.googleapis.com/tff-datasets-public/cifar100.sqlite.lzma" in message


def test_other_loaders_have_tff_structures(tmp_path):
    rng = np.random.RandomState(2)
    text = np.array(["to be or not", "that is"], dtype=object)
    datasets.write_sqlite(str(tmp_path / "shakespeare.sqlite"), {s: {"KING": {"snippets": text}} for s in ("train", "test")})
    overflow = {
        "creation_date": np.array(["2010-01-01", "2011-02-02"], dtype=object), "score": np.array([3, -1]),
        "tags": np.array(["python|tf", "c"], dtype=object), "title": np.array(["How?", "Why?"], dtype=object),
        "tokens": np.array(["how do i", "why"], dtype=object), "type": np.array(["question", "answer"], dtype=object),
    }
    datasets.write_sqlite(str(tmp_path / "stackoverflow.sqlite"), {s: {"u1": overflow} for s in ("train", "heldout", "test")})
    images = rng.randint(0, 256, (3, 32, 32, 3))
    cifar = {"coarse_label": np.array([1, 2, 3]), "image": images, "label": np.array([10, 20, 30])}
    datasets.write_sqlite(str(tmp_path / "cifar100.sqlite"), {s: {"0": cifar} for s in ("train", "test")})

    shakespeare_train, _ = datasets.shakespeare.load_data(cache_dir=str(tmp_path))
    assert shakespeare_train.element_type_structure == collections.OrderedDict(snippets=tf.TensorSpec([], tf.string))
    assert [e["snippets"] for e in _elements(shakespeare_train.create_tf_dataset_for_client("KING"))] == [b"to be or not", b"that is"]

    splits = datasets.stackoverflow.load_data(cache_dir=str(tmp_path))
    assert len(splits) == 3
    element = _elements(splits[1].create_tf_dataset_for_client("u1"))[1]
    assert list(element) == ["creation_date", "score", "tags", "title", "tokens", "type"]
    assert element["score"] == -1 and element["score"].dtype == np.int64 and element["type"] == b"answer"

    cifar_train, _ = datasets.cifar100.load_data(cache_dir=str(tmp_path))
    assert cifar_train.element_type_structure == collections.OrderedDict(
        coarse_label=tf.TensorSpec([], tf.int64), image=tf.TensorSpec([32, 32, 3], tf.uint8), label=tf.TensorSpec([], tf.int64)
    )
    elements = _elements(cifar_train.create_tf_dataset_for_client("0"))
    np.testing.assert_array_equal(np.stack([e["image"] for e in elements]), images.astype(np.uint8))


def test_malformed_files_get_clear_errors(tmp_path):
    good = {"train": {"a": {"label": np.array([1, 2])}}}
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(datasets.MalformedDatasetError, match="garbage.sqlite: not a readable SQLite database"):
        datasets.SqlClientData(str(garbage))

    no_table = tmp_path / "no_table.sqlite"
    sqlite3.connect(no_table).execute("CREATE TABLE examples (split_name, client_id, serialized_example_proto)").connection.commit()
    with pytest.raises(datasets.MalformedDatasetError, match="missing table 'client_metadata'"):
        datasets.SqlClientData(str(no_table))

    no_column = tmp_path / "no_column.sqlite"
    connection = sqlite3.connect(no_column)
    connection.execute("CREATE TABLE examples (split_name, client_id, proto)")
    connection.execute("CREATE TABLE client_metadata (client_id, split_name, num_examples)")
    connection.commit()
    with pytest.raises(datasets.MalformedDatasetError, match="table 'examples' lacks column\\(s\\) \\['serialized_example_proto'\\]"):
        datasets.SqlClientData(str(no_column))

    path = datasets.write_sqlite(str(tmp_path / "corrupt.sqlite"), good)
    connection = sqlite3.connect(path)
    connection.execute("UPDATE examples SET serialized_example_proto = X'DEADBEEF' WHERE rowid = 2")
    connection.commit()
    data = datasets.SqlClientData(path, "train", {"label": tf.io.FixedLenFeature([], tf.int64)})
    with pytest.raises(datasets.MalformedDatasetError, match="split 'train', client 'a', example 1: cannot parse"):
        data.create_tf_dataset_for_client("a")
    with pytest.raises(datasets.MalformedDatasetError, match="no clients for split 'validation' \\(splits present: \\['train'\\]\\)"):
        datasets.SqlClientData(path, "validation")

    (tmp_path / "bad" ).mkdir()
    (tmp_path / "bad" / "emnist_all.sqlite.lzma").write_bytes(b"not lzma at all")
    with pytest.raises(ValueError, match="emnist_all.sqlite.lzma: not a valid LZMA file"):
        datasets.emnist.load_data(cache_dir=str(tmp_path / "bad"))
    assert not list((tmp_path / "bad").glob("*.partial*")) and not (tmp_path / "bad" / "emnist_all.sqlite").exists()


# --- synthetic data ----------------------------------------------------------------------------


def test_synthetic_emnist():
    data = datasets.emnist.get_synthetic()
    assert len(data.client_ids) == 2
    assert data.element_type_structure == collections.OrderedDict(label=tf.TensorSpec([], tf.int32), pixels=tf.TensorSpec([28, 28], tf.float32))
    labels = [e["label"] for e in _elements(data.create_tf_dataset_for_client(data.client_ids[0]))]
    assert len(labels) == 10 and max(labels) < 10
    skewed = datasets.emnist.synthetic_client_data(20, skew=1.0, seed=4)
    again = datasets.emnist.synthetic_client_data(20, skew=1.0, seed=4)
    for client_id in skewed.client_ids[:3]:
        labels = [int(e["label"]) for e in _elements(skewed.create_tf_dataset_for_client(client_id))]
        assert len(set(labels)) <= 3  # all from the client's three favourite classes
        _assert_same_elements(skewed.create_tf_dataset_for_client(client_id), again.create_tf_dataset_for_client(client_id))


def test_leaf_synthetic_follows_the_generating_process():
    data = datasets.leaf_synthetic.load_data(alpha=0.0, beta=0.0, num_clients=40, seed=0, max_examples=400)
    assert data.element_type_structure == collections.OrderedDict(x=tf.TensorSpec([60], tf.float32), y=tf.TensorSpec([], tf.int32))
    whole = {i: next(iter(data.create_tf_dataset_for_client(i).batch(10**6))) for i in data.client_ids}
    sizes = [len(client["y"]) for client in whole.values()]
    assert min(sizes) >= 50 and max(sizes) <= 400
    x = max(whole.values(), key=lambda client: len(client["y"]))["x"].numpy()
    variances = x.var(axis=0)
    expected = np.arange(1, 61) ** -1.2
    assert np.all(np.abs(variances / expected - 1) < 0.35)  # Sigma = diag(j^-1.2)

    def client_means(beta):
        spread = datasets.leaf_synthetic.load_data(alpha=0.0, beta=beta, num_clients=200, seed=1, max_examples=60)
        return [next(iter(spread.create_tf_dataset_for_client(i).batch(10**6)))["x"].numpy().mean() for i in spread.client_ids]

    # A client's features average to B_k ~ N(0, beta) (plus v_k's own unit noise over 60 dims).
    assert np.var(client_means(0.0)) < 0.1
    assert 3.0 < np.var(client_means(4.0)) < 5.5
    with pytest.raises(ValueError, match="alpha and beta are variances"):
        datasets.leaf_synthetic.load_data(alpha=-1.0, beta=0.0)


def test_element_spec_read_while_tracing_adds_nothing_to_the_graph(arrays):
    """model_fns read element_type_structure while fedsim traces them (a regression)."""
    data = TestClientData(arrays).preprocess(lambda ds: ds.batch(2))

    @fedsim.tf_computation
    def uses_the_spec():
        spec = data.element_type_structure
        return tf.zeros([spec["x"].shape[-1]])

    np.testing.assert_array_equal(uses_the_spec(), np.zeros(3))
    restored = fedsim.deserialize_computation(fedsim.serialize_computation(uses_the_spec))
    np.testing.assert_array_equal(restored(), np.zeros(3))
