"""Batched sequences fed as tensors: the same batches as a dataset, without tf.data per call.

A client's data is usually `tf.data.Dataset.from_tensor_slices(arrays).batch(n)`. Iterating
such a dataset inside a graph costs 13-30 ms per call on this machine however few its batches
(iterator creation, tf.data graph rewrites), against under 1 ms to slice the same batches from
the arrays. So a `tf_computation` whose parameter holds batched sequences is also traced (on
first use) with `SlicedSequence` stand-ins: the examples as tensors plus the batch size, batch
`i` being rows `[i*n, min((i+1)*n, count))`. `for batch in sequence:` (autograph) and
`sequence.reduce(...)` run the same loop body over the same batches in the same order, so the
arithmetic is the same as with the dataset. The runtime feeds a dataset this way only when it
recognizes it (`as_slices`); anything else goes through the dataset graph, unchanged.

This module is the one that wraps tf.data's own structures, so it is where `tf.nest` (the
order tf.data flattens in) meets fedsim's type order.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import tensorflow as tf
from tensorflow.python.autograph.operators import control_flow

from fedsim.core import structure
from fedsim.core import types as ft

__all__ = ["SlicedSequence", "is_sliceable_type", "as_slices", "UnsupportedSequenceUse"]


class UnsupportedSequenceUse(TypeError):
    """A computation uses its sequence in a way the sliced form does not imitate."""


def is_sliceable_type(sequence_type: ft.SequenceType) -> bool:
    """Whether every element leaf is a tensor whose first dimension (the batch) is unknown."""
    leaves = ft.flatten_type(sequence_type.element)
    return bool(leaves) and all(
        isinstance(leaf, ft.TensorType) and leaf.shape is not None and len(leaf.shape) >= 1 and leaf.shape[0] is None
        for leaf in leaves
    )


class SlicedSequence:
    """A batched sequence inside a graph: `examples` (a structure of the element type, one row
    per example) and `batch_size` (int64). Supports iteration (`for batch in ...`), `reduce`
    and `element_spec`; any other dataset method is refused (the dataset graph is used)."""

    def __init__(self, element_type: ft.Type, examples: Any, batch_size: tf.Tensor):
        self._element_type = element_type
        self._examples = examples
        self._leaves = structure.flatten_value(examples, element_type)
        self._batch_size = tf.cast(batch_size, tf.int64)
        self._count = tf.shape(self._leaves[0], out_type=tf.int64)[0]

    @property
    def example_leaves(self) -> list:
        """The examples' tensors, in the element type's leaf order."""
        return list(self._leaves)

    @property
    def batch_size(self) -> tf.Tensor:
        return self._batch_size

    @property
    def element_spec(self) -> Any:
        return structure.map_structure(lambda leaf, _: leaf.to_spec(), self._element_type, self._examples)

    @property
    def num_batches(self) -> tf.Tensor:
        return (self._count + self._batch_size - 1) // self._batch_size

    def batch(self, index: tf.Tensor) -> Any:
        start = tf.cast(index, tf.int64) * self._batch_size
        end = tf.minimum(start + self._batch_size, self._count)
        return structure.unflatten_value(self._element_type, [leaf[start:end] for leaf in self._leaves])

    def reduce(self, initial_state: Any, reduce_func: Callable) -> Any:
        """As `tf.data.Dataset.reduce`: folds the batches in order."""

        def body(index, state):
            return index + 1, reduce_func(state, self.batch(index))

        _, result = tf.while_loop(lambda index, _: index < self.num_batches, body,
                                  (tf.constant(0, tf.int64), initial_state))
        return result

    def __iter__(self):
        raise UnsupportedSequenceUse("a sliced sequence is iterated by a TensorFlow loop, not in Python")

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"the sliced form of a sequence has no {name!r}; the dataset form is used")


def _sliced_for_stmt(iter_, extra_test, body, get_state, set_state, symbol_names, opts):
    """autograph's `for batch in sequence:` over a SlicedSequence: a range loop over batches."""
    indices = tf.range(iter_.num_batches)
    control_flow._tf_range_for_stmt(  # the loop autograph itself uses for `for i in tf.range(n)`
        indices, extra_test, lambda index: body(iter_.batch(index)), get_state, set_state, symbol_names, opts
    )


control_flow.for_loop_registry.register(SlicedSequence, _sliced_for_stmt)


def as_slices(dataset: tf.data.Dataset, element_type: ft.Type) -> Optional[tuple]:
    """`(example leaves in the type's order, batch size)` when `dataset` is exactly
    `from_tensor_slices(tensors).batch(n)` (not dropping a remainder); else None."""
    if type(dataset).__name__ != "_BatchDataset":
        return None
    source = getattr(dataset, "_input_dataset", None)
    if type(source).__name__ != "_TensorSliceDataset":
        return None
    try:
        if bool(dataset._drop_remainder) or getattr(dataset, "_parallel_copy", False):
            return None
        examples = tf.nest.pack_sequence_as(source.element_spec, list(source._tensors))
        leaves = structure.flatten_value(examples, element_type)
        batch_size = dataset._batch_size
    except (AttributeError, TypeError, ValueError):
        return None
    return leaves, batch_size
