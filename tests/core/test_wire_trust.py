"""Bytes read from the wire carry data only: no imports, no unregistered classes, no refused ops.

Each attack here is built as an attacker would build it (by editing real serialized bytes or
graphs) and must fail with the message a user sees, while honest bytes still run.
"""

import collections
import hashlib
import json
import struct
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import fedsim
from fedsim.core import containers, op_allowlist, review, serialization

SERVER_FLOAT = fedsim.FederatedType(tf.float32, fedsim.SERVER)
CLIENT_FLOATS = fedsim.FederatedType(tf.float32, fedsim.CLIENTS)
Pair = collections.namedtuple("Pair", ["total", "count"])  # not registered
RegisteredPair = containers.register_container(
    collections.namedtuple("RegisteredPair", ["total", "count"]), "tests.core.RegisteredPair"
)


# Helpers that edit serialized bytes the way an attacker with write access to S3 would. ------------

def _split(data: bytes) -> tuple:
    magic, (length,) = data[:8], struct.unpack(">Q", data[8:16])
    header = json.loads(data[16:16 + length])
    return magic, header, data[16 + length:]


def _join(magic: bytes, header: dict, rest: bytes) -> bytes:
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return magic + struct.pack(">Q", len(text)) + text + rest


def _edit_header(data: bytes, edit) -> bytes:
    magic, header, rest = _split(data)
    edit(header)
    return _join(magic, header, rest)


def _replace_graph(data: bytes, edit_graph) -> bytes:
    """Replaces the (single) graph blob by `edit_graph(GraphDef)`, with a correct checksum."""
    magic, header, rest = _split(data)
    assert len(header["blobs"]) == 1
    graph_def = tf.compat.v1.GraphDef.FromString(rest)
    edit_graph(graph_def)
    blob = graph_def.SerializeToString()
    header["blobs"] = [{"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}]
    return _join(magic, header, blob)


def _containers_in(node, found):
    if isinstance(node, dict):
        if "container" in node:
            found.append(node)
        for value in node.values():
            _containers_in(value, found)
    elif isinstance(node, list):
        for value in node:
            _containers_in(value, found)
    return found


# Containers -------------------------------------------------------------------------------------

@fedsim.federated_computation(CLIENT_FLOATS)
def registered_pair(values):
    return RegisteredPair(fedsim.federated_sum(values), fedsim.federated_sum(values))


@fedsim.federated_computation(CLIENT_FLOATS)
def unregistered_pair(values):
    return Pair(fedsim.federated_sum(values), fedsim.federated_sum(values))


def test_registered_containers_come_back_and_unregistered_ones_are_plain():
    data = fedsim.serialize_computation(registered_pair)
    restored = fedsim.deserialize_computation(data)
    assert restored([1.0, 2.0]) == RegisteredPair(3.0, 3.0)
    assert type(restored([1.0, 2.0])) is RegisteredPair
    assert fedsim.serialize_computation(restored) == data  # equal types, equal bytes
    plain = fedsim.deserialize_computation(fedsim.serialize_computation(unregistered_pair))
    assert plain([1.0, 2.0]) == {"total": 3.0, "count": 3.0}
    assert b"Pair" not in fedsim.serialize_computation(unregistered_pair)  # no class name, no module path
    assert b"tests.core" not in fedsim.serialize_computation(unregistered_pair)


def test_registering_a_name_twice_for_different_classes_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        containers.register_container(Pair, "tests.core.RegisteredPair")
    with pytest.raises(ValueError, match="dotted identifier"):
        containers.register_container(Pair, "py:os:system")


@pytest.mark.parametrize("name", ["py:attacker_module:Popen", "attacker_module.Popen", "attacker_module:Popen",
                                  "attacker_module", "attacker_module/Popen", "py:attacker_module.Popen"])
def test_a_crafted_container_name_is_never_imported(tmp_path, monkeypatch, name):
    marker = tmp_path / "imported.txt"
    (tmp_path / "attacker_module.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\nclass Popen(dict):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    def point_at_attacker(header):
        for node in _containers_in(header, []):
            if node["container"] == "tests.core.RegisteredPair":
                node["container"] = name

    data = _edit_header(fedsim.serialize_computation(registered_pair), point_at_attacker)
    assert b"attacker_module" in data
    modules_before = set(sys.modules)
    restored = fedsim.deserialize_computation(data)
    result = restored([1.0, 2.0])
    assert result == {"total": 3.0, "count": 3.0} and type(result) is dict
    assert "attacker_module" not in sys.modules and not marker.exists()
    imported = set(sys.modules) - modules_before  # nothing from where the attacker's files are
    assert not [m for m in imported if str(tmp_path) in str(getattr(sys.modules[m], "__file__", "") or "")]
    assert fedsim.serialize_computation(restored) == data  # the unknown name is kept, not resolved


def test_format_1_bytes_are_refused_with_the_reason():
    data = _edit_header(fedsim.serialize_computation(registered_pair), lambda h: h.update(format=1))
    with pytest.raises(fedsim.SerializationError, match="format 1, which named Python classes as import paths"):
        fedsim.deserialize_computation(data)


@pytest.mark.parametrize("edit, message", [
    (lambda h: h.pop("root"), r"the header must have the fields"),
    (lambda h: h["root"].update(kind="python"), "unknown computation kind 'python'"),
    (lambda h: h["root"].update(unpack="yes"), "unpack must be true or false"),
    (lambda h: h["root"]["ir"]["lambda"].update(parameter_type={"tensor": {"dtype": "resource", "shape": []}}),
     "dtype 'resource' is not a value dtype"),
    (lambda h: h["root"]["ir"]["lambda"].update(parameter_type={"tensor": {"dtype": "float32", "shape": [-3]}}),
     "dimension -3"),
    (lambda h: h["root"]["ir"]["lambda"].update(result={"eval": "__import__('os')"}), "not a serialized building block"),
    (lambda h: h["blobs"].append({"size": "big", "sha256": "0"}), "invalid size"),
    (lambda h: h.update(format=99), "unsupported serialization format 99"),
])
def test_malformed_headers_get_clear_errors(edit, message):
    data = _edit_header(fedsim.serialize_computation(registered_pair), edit)
    with pytest.raises(fedsim.SerializationError, match=message):
        fedsim.deserialize_computation(data)


# The op allowlist ---------------------------------------------------------------------------------

@fedsim.tf_computation(tf.string)
def steal(path):
    listing = tf.io.matching_files(tf.strings.join([path, "/*"]))
    secret = tf.io.read_file(tf.strings.join([path, "/secret.txt"]))
    tf.io.write_file(tf.strings.join([path, "/planted.txt"]), secret)
    return {"listing": tf.strings.reduce_join(listing, separator=","), "secret": secret}


@fedsim.federated_computation(fedsim.FederatedType(tf.string, fedsim.CLIENTS))
def steal_everywhere(paths):
    return fedsim.federated_map(steal, paths)


def test_file_access_deserializes_only_with_an_extended_allowlist(tmp_path):
    (tmp_path / "secret.txt").write_text("patient records")
    for computation in (steal, steal_everywhere):
        with pytest.raises(op_allowlist.DisallowedOpError) as refused:
            fedsim.deserialize_computation(fedsim.serialize_computation(computation))
        message = str(refused.value)
        assert "the computation 'steal' uses the op" in message
        assert "not in the op allowlist" in message and "node '" in message
        assert {"MatchingFiles", "ReadFile", "WriteFile"} <= set(message.replace(",", " ").replace(".", " ").split())
    assert not (tmp_path / "planted.txt").exists()
    # A trusted caller may extend the allowlist, by name; the default is unchanged.
    trusted = op_allowlist.DEFAULT_OP_ALLOWLIST.extended("trusted_files", ["MatchingFiles", "ReadFile", "WriteFile"])
    restored = fedsim.deserialize_computation(fedsim.serialize_computation(steal), allowed_ops=trusted)
    assert restored(str(tmp_path))["secret"] == b"patient records"
    assert not op_allowlist.DEFAULT_OP_ALLOWLIST.allows("ReadFile") and trusted.family_of("ReadFile") == "trusted_files"
    assert not trusted.without("ReadFile").allows("ReadFile")


@fedsim.tf_computation(tf.float32)
def double(x):
    return x * 2.0


def _pyfunc_node(graph_def_or_function, name="call_python"):
    node = graph_def_or_function.add()
    node.name, node.op = name, "PyFunc"
    node.attr["token"].s = b"pyfunc_0"
    node.attr["Tin"].list.SetInParent()
    node.attr["Tout"].list.type.append(tf.float32.as_datatype_enum)
    return node


def test_a_hand_made_pyfunc_graph_is_refused():
    data = fedsim.serialize_computation(double)
    assert fedsim.deserialize_computation(data)(2.0) == 4.0
    in_graph = _replace_graph(data, lambda g: _pyfunc_node(g.node))
    with pytest.raises(op_allowlist.DisallowedOpError, match=r"'double' uses the op PyFunc \(node 'call_python'\)"):
        fedsim.deserialize_computation(in_graph)

    def hide_in_library(graph_def):
        function = graph_def.library.function.add()
        function.signature.name = "innocent_helper"
        _pyfunc_node(function.node_def, "deep")

    with pytest.raises(op_allowlist.DisallowedOpError, match=r"PyFunc \(node 'deep' in function 'innocent_helper'\)"):
        fedsim.deserialize_computation(_replace_graph(data, hide_in_library))


def test_a_variable_shared_with_other_computations_is_refused():
    @fedsim.tf_computation(tf.float32)
    def accumulate(x):
        v = tf.Variable(0.0)
        v.assign_add(x)
        return v.read_value()

    def share(graph_def):
        for node in list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]:
            if node.op == "VarHandleOp":
                node.attr["shared_name"].s = b"the_silos_secret_variable"

    data = fedsim.serialize_computation(accumulate)
    assert fedsim.deserialize_computation(data)(3.0) == 3.0
    with pytest.raises(op_allowlist.DisallowedOpError, match="may only create resources of its own"):
        fedsim.deserialize_computation(_replace_graph(data, share))


def test_no_value_crosses_two_computations_through_a_shared_resource():
    """A hash table named by two computations would carry a value from one to the other."""

    @fedsim.tf_computation(tf.float32)
    def plant(x):
        table = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, default_value=-1.0, name="t")
        table.insert(tf.constant([0], tf.int64), tf.reshape(x, [1]))
        return table.lookup(tf.constant([0], tf.int64))[0]

    @fedsim.tf_computation(tf.int64)
    def harvest(key):
        table = tf.lookup.experimental.MutableHashTable(tf.int64, tf.float32, default_value=-1.0, name="t")
        return table.lookup(tf.reshape(key, [1]))[0]

    def share(graph_def):
        for node in list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]:
            if "shared_name" in node.attr and node.op != "VarHandleOp":
                node.attr["shared_name"].s = b"the_silos_secret_table"

    planted, harvested = (fedsim.serialize_computation(c) for c in (plant, harvest))
    assert fedsim.deserialize_computation(planted)(123.5) == 123.5
    assert fedsim.deserialize_computation(harvested)(0) == -1.0  # as traced, each table is its own
    for data in (planted, harvested):
        with pytest.raises(op_allowlist.DisallowedOpError, match="MutableHashTable.*shared resource"):
            fedsim.deserialize_computation(_replace_graph(data, share))


def test_the_default_allowlist_names_real_ops_and_none_that_reach_outside():
    from tensorflow.python.framework import op_def_registry

    unknown = sorted(op for op in op_allowlist.DEFAULT_OP_ALLOWLIST.ops if op_def_registry.get(op) is None)
    assert not unknown
    outside = {"ReadFile", "WriteFile", "MatchingFiles", "SaveV2", "RestoreV2", "MergeV2Checkpoints", "PyFunc",
               "PyFuncStateless", "EagerPyFunc", "RemoteCall", "ImmutableConst", "TFRecordDataset", "SqlDataset",
               "CacheDatasetV2", "SnapshotDatasetV2", "SaveDatasetV2", "LoadDataset", "PrintV2", "DatasetFromGraph",
               "InitializeTableFromTextFileV2", "WriteScalarSummary", "CollectiveReduceV2", "Abort",
               "FixedLengthRecordDatasetV2", "TextLineDataset", "WholeFileReaderV2", "DataServiceDatasetV4"}
    assert not outside & op_allowlist.DEFAULT_OP_ALLOWLIST.ops
    assert {"MatMul", "Conv2D", "StatelessRandomUniformV2", "VarHandleOp", "BatchDatasetV2", "While"} <= op_allowlist.DEFAULT_OP_ALLOWLIST.ops


# Review -------------------------------------------------------------------------------------------

def test_review_summarizes_without_running(tmp_path, capsys):
    data = fedsim.serialize_computation(steal_everywhere)
    summary = review.summarize(data)
    assert summary.sha256 == hashlib.sha256(data).hexdigest() == serialization.computation_hash(data)
    assert summary.type_signature == "({str}@CLIENTS -> {<listing=str,secret=str>}@CLIENTS)"
    assert summary.refused_ops == ("MatchingFiles", "ReadFile", "WriteFile")
    assert summary.ops["ReadFile"] == 1 and summary.kind == "federated" and summary.graphs == 1
    (tmp_path / "steal.bin").write_bytes(data)
    assert review.main([str(tmp_path / "steal.bin")]) == 0
    printed = capsys.readouterr().out
    assert summary.sha256 in printed and "ReadFile" in printed and "NOT ALLOWED" in printed
    big = fedsim.tf_computation(lambda x: x + tf.constant(np.ones(1000, np.float32)), tf.float32)
    assert review.summarize(fedsim.serialize_computation(big)).constant_bytes >= 4000


# A silo imports only the core -------------------------------------------------------------------

def test_a_learning_computation_runs_where_only_the_core_is_imported(tmp_path, python_subprocess):
    import keras

    from fedsim import learning

    def model_fn():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        spec = collections.OrderedDict(x=tf.TensorSpec([None, 3], tf.float32), y=tf.TensorSpec([None], tf.int32))
        return learning.from_keras_model(model, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                                         input_spec=spec)

    process = learning.build_weighted_fed_avg(model_fn, lambda: learning.optimizers.build_sgdm(0.1))
    (tmp_path / "initialize.bin").write_bytes(fedsim.serialize_computation(process.initialize))
    (tmp_path / "next.bin").write_bytes(fedsim.serialize_computation(process.next))
    rng = np.random.RandomState(0)
    arrays = [collections.OrderedDict(x=rng.randn(n, 3).astype(np.float32), y=rng.randint(0, 2, n).astype(np.int32))
              for n in (5, 7)]
    np.savez(tmp_path / "data.npz", **{f"{k}{i}": v for i, a in enumerate(arrays) for k, v in a.items()})
    datasets = [tf.data.Dataset.from_tensor_slices(a).batch(2) for a in arrays]
    expected = process.next(process.initialize(), datasets).state.global_model_weights.trainable
    completed = python_subprocess(textwrap.dedent("""
        import collections, sys
        import numpy as np
        import tensorflow as tf
        keras_after_tensorflow = {m for m in sys.modules if m == "keras" or m.startswith("keras.")}
        import fedsim.core
        initialize = fedsim.core.deserialize_computation(open("initialize.bin", "rb").read())
        next_fn = fedsim.core.deserialize_computation(open("next.bin", "rb").read())
        data = np.load("data.npz")
        datasets = [tf.data.Dataset.from_tensor_slices(collections.OrderedDict(x=data[f"x{i}"], y=data[f"y{i}"])).batch(2)
                    for i in range(2)]
        output = next_fn(initialize(), datasets)
        np.savez("weights.npz", *output["state"]["global_model_weights"]["trainable"])
        loaded = sorted(m for m in sys.modules if m.split(".")[:2] in (["fedsim", "learning"], ["fedsim", "aggregators"],
                        ["fedsim", "simulation"], ["fedsim", "aws"]))
        new_keras = sorted({m for m in sys.modules if m == "keras" or m.startswith("keras.")} - keras_after_tensorflow)
        print(type(output).__name__, loaded, new_keras)
    """), cwd=str(tmp_path))
    assert completed.stdout.strip().splitlines()[-1] == "dict [] []"
    with np.load(tmp_path / "weights.npz") as weights:
        for index, want in enumerate(expected):
            np.testing.assert_allclose(weights[f"arr_{index}"], want, rtol=1e-6, atol=1e-7)
