import collections

import numpy as np
import pytest
import tensorflow as tf

import fedsim
from fedsim.core import types as ft


def test_tff_style_printing():
    assert str(fedsim.to_type({"a": (tf.float32, [10]), "b": tf.int32})) == "<a=float32[10],b=int32>"
    assert str(fedsim.FederatedType(tf.float32, fedsim.CLIENTS)) == "{float32}@CLIENTS"
    assert str(fedsim.FederatedType(tf.float32, fedsim.SERVER)) == "float32@SERVER"
    assert str(fedsim.FederatedType(tf.float32, fedsim.CLIENTS, all_equal=True)) == "float32@CLIENTS"
    element = {"x": (tf.float32, [None, 784]), "y": (tf.int32, [None])}
    data = fedsim.FederatedType(fedsim.SequenceType(element), fedsim.CLIENTS)
    assert str(data) == "{<x=float32[?,784],y=int32[?]>*}@CLIENTS"
    fn = fedsim.FunctionType(fedsim.StructType([("state", fedsim.FederatedType(tf.float32, fedsim.SERVER)), ("data", data)]),
                             fedsim.FederatedType(tf.float32, fedsim.SERVER))
    assert str(fn) == "(<state=float32@SERVER,data={<x=float32[?,784],y=int32[?]>*}@CLIENTS> -> float32@SERVER)"
    assert str(fedsim.FunctionType(None, tf.int32)) == "( -> int32)"
    assert str(fedsim.TensorType(tf.float32, None)) == "float32[*]"


def test_conversions_from_tensorflow_and_python():
    assert fedsim.to_type(tf.TensorSpec([None, 3], tf.float64)) == fedsim.TensorType(tf.float64, [None, 3])
    assert fedsim.to_type(np.int64) == fedsim.TensorType(tf.int64)
    assert fedsim.to_type("bool") == fedsim.TensorType(tf.bool)
    assert fedsim.to_type(float) == fedsim.TensorType(tf.float32)
    dataset_spec = tf.data.Dataset.from_tensor_slices({"x": np.zeros((4, 2), np.float32)}).element_spec
    assert str(fedsim.to_type(tf.data.DatasetSpec(dataset_spec))) == "<x=float32[2]>*"
    Point = collections.namedtuple("Point", ["x", "y"])
    point_type = fedsim.to_type(Point(tf.float32, (tf.int32, [2])))
    assert str(point_type) == "<x=float32,y=int32[2]>" and point_type.container is Point
    assert str(fedsim.to_type([tf.float32, (tf.int32, [2])])) == "<float32,int32[2]>"
    with pytest.raises(TypeError, match="cannot convert"):
        fedsim.to_type(object())


def test_infer_type():
    value = {"w": np.zeros((2, 3), np.float32), "n": 3, "lr": 0.5, "ok": True}
    assert str(fedsim.infer_type(value)) == "<w=float32[2,3],n=int32,lr=float32,ok=bool>"
    ds = tf.data.Dataset.range(3)
    assert str(fedsim.infer_type(ds)) == "int64*"


def test_assignability_and_differences():
    unknown = fedsim.TensorType(tf.float32, [None, 10])
    known = fedsim.TensorType(tf.float32, [5, 10])
    assert fedsim.is_assignable_from(unknown, known)
    assert not fedsim.is_assignable_from(known, unknown)
    difference = ft.find_type_difference(fedsim.to_type({"a": (tf.float32, [10])}), fedsim.to_type({"a": (tf.float32, [5])}))
    assert ".a" in difference and "dimension 0: 10 vs 5" in difference
    clients_all_equal = fedsim.FederatedType(tf.float32, fedsim.CLIENTS, all_equal=True)
    clients = fedsim.FederatedType(tf.float32, fedsim.CLIENTS)
    assert fedsim.is_assignable_from(clients, clients_all_equal)
    assert not fedsim.is_assignable_from(clients_all_equal, clients)
    server = fedsim.FederatedType(tf.float32, fedsim.SERVER)
    assert "placed at CLIENTS" in ft.find_type_difference(clients, server)


def test_json_round_trip_keeps_types_and_containers():
    Point = collections.namedtuple("Point", ["x", "y"])
    original = fedsim.FunctionType(
        fedsim.StructType([("p", fedsim.to_type(collections.OrderedDict(a=tf.float32))), (None, fedsim.SequenceType(tf.int32))]),
        fedsim.FederatedType(fedsim.to_type(Point(tf.float32, tf.int64)), fedsim.CLIENTS),
    )
    restored = ft.type_from_json(original.to_json())
    assert restored == original
    assert restored.parameter[0].container is collections.OrderedDict
    # A namedtuple defined in a test module cannot be imported by name; it falls back to no container.
    assert restored.result.member.container in (Point, None)


def test_bad_federated_types():
    with pytest.raises(TypeError, match="placement"):
        fedsim.FederatedType(tf.float32, "clients")
    with pytest.raises(TypeError, match="cannot hold another federated type"):
        fedsim.FederatedType(fedsim.FederatedType(tf.float32, fedsim.SERVER), fedsim.CLIENTS)
