"""Decoding an uploaded value is bounded: headers and declared sizes are checked before any data is read."""

import collections
import io
import tracemalloc
import zipfile

import numpy as np
import pytest
import tensorflow as tf

import fedsim
from fedsim.aws import protocol

VALUE_TYPE = fedsim.to_type(collections.OrderedDict(w=(tf.float32, [3, 2]), n=tf.int64))


def _npy_header(shape, dtype) -> bytes:
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(stream, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                  "fortran_order": False, "shape": tuple(shape)})
    return stream.getvalue()


def _archive(members, compression=zipfile.ZIP_STORED) -> bytes:
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w", compression=compression) as archive:
        for name, chunks in members:
            with archive.open(name, "w", force_zip64=True) as member:
                for chunk in chunks:
                    member.write(chunk)
    return stream.getvalue()


def test_round_trip():
    value = collections.OrderedDict(w=np.arange(6, dtype=np.float32).reshape(3, 2), n=np.int64(7))
    decoded = protocol.decode_value(protocol.encode_value(value, VALUE_TYPE), VALUE_TYPE, "the value")
    np.testing.assert_array_equal(decoded["w"], value["w"])
    assert decoded["n"] == 7


def test_a_zip_bomb_is_refused_without_inflating_it():
    """200 MB of zeros deflate to a few hundred KB; refusing it must not allocate the 200 MB."""
    inflated = 200 * 2**20
    zeros = bytes(2**20)
    bomb = _archive([
        ("leaf_00000.npy", [_npy_header([inflated // 4], np.float32)] + [zeros] * (inflated // len(zeros))),
        ("leaf_00001.npy", [_npy_header([], np.int64), bytes(8)]),
    ], compression=zipfile.ZIP_DEFLATED)
    assert len(bomb) < 2 * 2**20
    value_type = fedsim.to_type(collections.OrderedDict(w=(tf.float32, [None]), n=tf.int64))
    tracemalloc.start()
    try:
        with pytest.raises(protocol.InvalidValueError, match="compressed"):
            protocol.decode_value(bomb, value_type, "silo c's result")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20


def test_a_header_claiming_more_data_than_sent_is_refused():
    lying = _archive([
        ("leaf_00000.npy", [_npy_header([10**9], np.float32), bytes(24)]),
        ("leaf_00001.npy", [_npy_header([], np.int64), bytes(8)]),
    ])
    value_type = fedsim.to_type(collections.OrderedDict(w=(tf.float32, [None]), n=tf.int64))
    with pytest.raises(protocol.InvalidValueError, match=r"claims shape \[1000000000\]"):
        protocol.decode_value(lying, value_type, "silo c's result")


@pytest.mark.parametrize("header, reason", [
    (_npy_header([3, 2], np.float64), "dtype float64, expected float32"),
    (_npy_header([2, 3], np.float32), r"shape \[2, 3\]"),
    (_npy_header([3, 2], object), "Python objects"),
])
def test_headers_are_checked_against_the_type_before_the_data(header, reason):
    archive = _archive([("leaf_00000.npy", [header, bytes(48)]), ("leaf_00001.npy", [_npy_header([], np.int64), bytes(8)])])
    with pytest.raises(protocol.InvalidValueError, match=reason):
        protocol.decode_value(archive, VALUE_TYPE, "silo c's result")


def test_garbage_is_named():
    with pytest.raises(protocol.InvalidValueError, match="silo c's result: not a readable value archive"):
        protocol.decode_value(b"not a zip", VALUE_TYPE, "silo c's result")
