"""fedsim's one value file format: round trips, and what a reader refuses before reading data."""

import io
import zipfile

import numpy as np
import pytest

from fedsim.aws import protocol
from fedsim.core import types as ft
from fedsim.core import value_archive
from fedsim.core.value_archive import LeafSpec


def test_round_trip_keeps_dtypes_shapes_and_strings():
    leaves = [np.arange(6, dtype=np.float32).reshape(2, 3), np.int64(7), np.array([b"a", b"bc"])]
    data = value_archive.encode_leaves(leaves)
    specs = [LeafSpec(np.float32, (None, 3)), LeafSpec(np.int64, ()), LeafSpec(np.bytes_, (2,))]
    back = value_archive.decode_leaves(data, specs, "a value")
    np.testing.assert_array_equal(back[0], leaves[0])
    assert back[1] == 7 and np.ndim(back[1]) == 0
    assert list(back[2]) == [b"a", b"bc"]
    # Plain numpy reads the same bytes: the format is .npz, nothing of fedsim's own.
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        assert sorted(archive.files) == ["leaf_000000", "leaf_000001", "leaf_000002"]


def test_the_aws_protocol_writes_the_same_format():
    value_type = ft.StructType([("w", ft.TensorType(np.float32, [2])), ("n", ft.TensorType(np.int32))])
    data = protocol.encode_value({"w": np.ones(2, np.float32), "n": np.int32(3)}, value_type)
    w, n = value_archive.decode_leaves(data, [LeafSpec(np.float32, (2,)), LeafSpec(np.int32, ())], "a result")
    np.testing.assert_array_equal(w, [1, 1])
    assert n == 3


@pytest.mark.parametrize("specs, reason", [
    ([LeafSpec(np.float64, (2,))], "dtype float32, expected float64"),
    ([LeafSpec(np.float32, (3,))], r"shape \[2\]"),
    ([LeafSpec(np.float32, (2,)), LeafSpec(np.float32, (2,))], "1 tensors, expected 2"),
])
def test_a_leaf_that_does_not_fit_is_named(specs, reason):
    data = value_archive.encode_leaves([np.zeros(2, np.float32)])
    with pytest.raises(value_archive.InvalidValueError, match=reason):
        value_archive.decode_leaves(data, specs, "b's result")


def test_compressed_members_and_non_finite_values_are_refused():
    stream = io.BytesIO()
    np.savez_compressed(stream, leaf_000000=np.zeros(2, np.float32))
    with pytest.raises(value_archive.InvalidValueError, match="compressed"):
        value_archive.decode_leaves(stream.getvalue(), [LeafSpec(np.float32, (2,))], "x")
    data = value_archive.encode_leaves([np.array([1.0, np.nan], np.float32)])
    with pytest.raises(value_archive.InvalidValueError, match="non-finite"):
        value_archive.decode_leaves(data, [LeafSpec(np.float32, (2,))], "x", require_finite=True)
    assert zipfile.is_zipfile(io.BytesIO(data))
