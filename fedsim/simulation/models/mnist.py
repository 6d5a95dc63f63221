"""EMNIST/MNIST helpers with TFF's names (`tff.simulation.models.mnist`)."""

from __future__ import annotations

import collections

import tensorflow as tf

__all__ = ["keras_dataset_from_emnist"]


def keras_dataset_from_emnist(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """EMNIST elements `{label, pixels[28,28]}` as Keras-style `{x: float32[784], y: label}`."""
    spec = dataset.element_spec
    if not isinstance(spec, dict) or "pixels" not in spec or "label" not in spec:
        raise ValueError(f"keras_dataset_from_emnist needs elements with 'pixels' and 'label', got {spec}")

    def to_keras(example):
        return collections.OrderedDict(x=tf.reshape(tf.cast(example["pixels"], tf.float32), [-1]), y=example["label"])

    return dataset.map(to_keras)
