"""fedsim's one file format for values: a `.npz` archive of a value's leaves, in order.

Used wherever fedsim writes a value down: the AWS protocol's broadcasts, results and silo
uploads (`fedsim.aws.protocol`) and the simulation's saved program states
(`fedsim.simulation.FileProgramStateManager`). Members are named `leaf_000000.npy`,
`leaf_000001.npy`, ... and stored uncompressed; nothing is pickled.

Reading is bounded before anything is decoded, because an archive may come from a party that
is not trusted: every member must be stored (so nothing inflates beyond the bytes received),
and each member's `.npy` header (dtype, shape) must match the leaf expected there and account
for the member's declared size before its data is read. A zip bomb or a header claiming a huge
shape is refused having read only headers.

Example::

    data = encode_leaves([np.zeros(3, np.float32), np.int64(7)])
    leaves = decode_leaves(data, [LeafSpec(np.float32, (None,)), LeafSpec(np.int64, ())], "a state")
"""

from __future__ import annotations

import io
import zipfile
from typing import Any, Optional, Sequence

import attrs
import numpy as np

__all__ = ["InvalidValueError", "LeafSpec", "decode_leaves", "encode_leaves", "leaf_name"]

_MAX_NPY_HEADER_BYTES = 64 * 1024  # a .npy header is a short dict literal


class InvalidValueError(ValueError):
    """A stored value does not match what was expected (or is not finite); the message says which leaf."""


@attrs.frozen
class LeafSpec:
    """What one leaf must be: its numpy dtype (`np.bytes_` for strings: bytes or text) and its
    shape, where `None` is a dimension of any size (a `None` shape: any rank). `label` names the
    leaf in errors."""

    dtype: Any = attrs.field(converter=np.dtype)
    shape: Optional[tuple] = attrs.field(converter=attrs.converters.optional(tuple))
    label: str = ""

    def accepts_dtype(self, dtype: np.dtype) -> bool:
        if self.dtype.kind in "SU":
            return dtype.kind in "SU"
        return dtype == self.dtype

    def accepts_shape(self, shape: tuple) -> bool:
        if self.shape is None:
            return True
        return len(shape) == len(self.shape) and all(want is None or want == got for want, got in zip(self.shape, shape))

    def describe(self) -> str:
        if self.label:
            return self.label
        dims = "..." if self.shape is None else ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype.name}[{dims}]"


def leaf_name(index: int) -> str:
    return f"leaf_{index:06d}"


def encode_leaves(leaves: Sequence[Any], stream: Optional[io.IOBase] = None) -> bytes:
    """The archive of `leaves` (written to `stream` if one is given; its bytes are returned otherwise)."""
    target = stream if stream is not None else io.BytesIO()
    np.savez(target, **{leaf_name(i): np.asarray(leaf) for i, leaf in enumerate(leaves)})
    return b"" if stream is not None else target.getvalue()


def _member_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, what: str, index: int) -> tuple:
    """`(shape, dtype)` from a member's `.npy` header, read without reading the data."""
    with archive.open(info) as member:
        try:
            version = np.lib.format.read_magic(member)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = reader(member, max_header_size=_MAX_NPY_HEADER_BYTES)
        except Exception as error:  # noqa: BLE001 - numpy raises several kinds for a malformed header
            raise InvalidValueError(f"{what}: tensor {index} has no readable .npy header ({type(error).__name__}: {error})") from None
    return tuple(shape), dtype


def decode_leaves(data: bytes, expected: Sequence[LeafSpec], what: str, require_finite: bool = False) -> list:
    """The leaves stored in `data`, each checked against its spec in `expected`.

    Args:
      data: the archive's bytes, as received.
      expected: one `LeafSpec` per leaf, in order.
      what: names the value in errors ("b's result", "the state saved as version 3").
      require_finite: refuse NaN and infinities in floating-point leaves.

    Returns:
      The leaves as numpy arrays (0-d leaves as numpy scalars).

    Raises:
      InvalidValueError: the archive is unreadable, compressed, has the wrong number of leaves,
        or a leaf's dtype, shape, size or values do not fit; the message names the leaf.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = sorted(archive.infolist(), key=lambda info: info.filename)
    except Exception as error:  # noqa: BLE001 - zipfile raises several kinds for corrupt archives
        raise InvalidValueError(f"{what}: not a readable value archive ({type(error).__name__}: {error})") from None
    with archive:
        if len(infos) != len(expected):
            raise InvalidValueError(f"{what}: {len(infos)} tensors, expected {len(expected)}")
        for index, (info, spec) in enumerate(zip(infos, expected)):
            if info.compress_type != zipfile.ZIP_STORED:
                raise InvalidValueError(f"{what}: tensor {index} is compressed; values are stored uncompressed (np.savez)")
            if info.file_size > len(data):
                raise InvalidValueError(f"{what}: tensor {index} declares {info.file_size} bytes in an archive of {len(data)}")
            shape, dtype = _member_header(archive, info, what, index)
            if dtype.hasobject:
                raise InvalidValueError(f"{what}: tensor {index} holds Python objects; only numeric and string arrays are read")
            if not spec.accepts_dtype(dtype):
                raise InvalidValueError(f"{what}: tensor {index} has dtype {dtype}, expected {spec.dtype.name} ({spec.describe()})")
            if not spec.accepts_shape(shape):
                raise InvalidValueError(f"{what}: tensor {index} has shape {list(shape)}, expected {spec.describe()}")
            if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize > info.file_size:
                raise InvalidValueError(f"{what}: tensor {index} claims shape {list(shape)}, more data than its {info.file_size} bytes")
        leaves = []
        for index, (info, spec) in enumerate(zip(infos, expected)):
            with archive.open(info) as member:
                try:
                    leaf = np.lib.format.read_array(member, allow_pickle=False, max_header_size=_MAX_NPY_HEADER_BYTES)
                except Exception as error:  # noqa: BLE001 - truncated data, a bad CRC
                    raise InvalidValueError(f"{what}: tensor {index} cannot be read ({type(error).__name__}: {error})") from None
            if require_finite and leaf.dtype.kind == "f" and not np.all(np.isfinite(leaf)):
                raise InvalidValueError(f"{what}: tensor {index} ({spec.describe()}) has non-finite values (NaN or inf)")
            leaves.append(leaf[()] if leaf.ndim == 0 else leaf)
    return leaves
