"""`ClientData`: a federated dataset as a set of client ids, each with its own `tf.data.Dataset`.

Building a client's dataset reads only that client's examples. Every ClientData also has a
`serializable_dataset_fn` (TensorFlow ops from a client-id string tensor to the dataset), so
`dataset_computation` is a `tf_computation` that a remote executor can run by id.

Example::

    data = TestClientData({"alice": {"x": xs_a, "y": ys_a}, "bob": {"x": xs_b, "y": ys_b}})
    train = data.preprocess(lambda ds: ds.shuffle(100, seed=0).batch(20))
    datasets = [train.create_tf_dataset_for_client(i) for i in train.client_ids]
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from fedsim.core.wrappers import tf_computation

__all__ = ["ClientData", "TestClientData"]

DatasetFn = Callable[[tf.Tensor], tf.data.Dataset]


class ClientData(abc.ABC):
    """The interface of TFF's `tff.simulation.datasets.ClientData`."""

    @property
    @abc.abstractmethod
    def client_ids(self) -> list:
        """The client ids, as strings, in a fixed order."""

    @property
    @abc.abstractmethod
    def serializable_dataset_fn(self) -> DatasetFn:
        """TensorFlow ops from a scalar string tensor (a client id) to that client's dataset."""

    @property
    def element_type_structure(self) -> Any:
        """The `tf.TypeSpec` structure of one element of a client's dataset."""
        return _cached_spec(self, lambda: self._dataset_for_known_client(self.client_ids[0]).element_spec)

    def _dataset_for_known_client(self, client_id: str) -> tf.data.Dataset:
        return self.serializable_dataset_fn(tf.constant(client_id))

    def _public_name(self) -> str:
        """The name of the first public class of this object (never an internal wrapper's)."""
        return next(c.__name__ for c in type(self).__mro__ if not c.__name__.startswith("_"))

    def create_tf_dataset_for_client(self, client_id: str) -> tf.data.Dataset:
        """The dataset of one client.

        Args:
            client_id: one of `client_ids`.

        Returns:
            Its `tf.data.Dataset` (preprocessed, if this ClientData was made by `preprocess`).

        Raises:
            TypeError: if `client_id` is not a str.
            ValueError: if `client_id` is unknown, naming it.

        Example:
            >>> dataset = client_data.create_tf_dataset_for_client(client_data.client_ids[0])
        """
        self._check_client_id(client_id)
        return self._dataset_for_known_client(client_id)

    def _check_client_id(self, client_id: str) -> None:
        if not isinstance(client_id, str):
            raise TypeError(f"{self._public_name()}: a client id is a str, got {type(client_id).__name__} {client_id!r}")
        if client_id not in self._id_set():
            raise ValueError(f"{self._public_name()}: unknown client id {client_id!r} (there are {len(self.client_ids)} clients)")

    def _id_set(self) -> frozenset:
        ids = getattr(self, "_cached_id_set", None)
        if ids is None:
            ids = frozenset(self.client_ids)
            self._cached_id_set = ids
        return ids

    @property
    def dataset_computation(self) -> Any:
        """A `tf_computation` from a client id (tf.string) to its dataset; traced once, serializable."""
        computation = getattr(self, "_dataset_computation", None)
        if computation is None:
            dataset_fn = self.serializable_dataset_fn

            @tf_computation(tf.string)
            def dataset_for_client(client_id):
                return dataset_fn(client_id)

            computation = self._dataset_computation = dataset_for_client
        return computation

    def datasets(self, limit_count: Optional[int] = None, seed: Optional[int] = None) -> Iterator[tf.data.Dataset]:
        """The clients' datasets one by one, in id order or shuffled by `seed`.

        Args:
            limit_count: at most this many clients.
            seed: shuffles the order of the clients; None keeps id order.

        Yields:
            Each client's `tf.data.Dataset`, read when reached.
        """
        ids = list(self.client_ids)
        if seed is not None:
            np.random.RandomState(seed).shuffle(ids)
        for client_id in ids[:limit_count]:
            yield self._dataset_for_known_client(client_id)

    def preprocess(self, preprocess_fn: Callable[[tf.data.Dataset], tf.data.Dataset]) -> "ClientData":
        """A ClientData whose datasets are `preprocess_fn(dataset)`; nothing is read until asked.

        Args:
            preprocess_fn: `tf.data.Dataset -> tf.data.Dataset` (shuffle, batch, map, ...).

        Returns:
            The preprocessed ClientData, with the same client ids.

        Raises:
            TypeError: if `preprocess_fn` is not callable.

        Example:
            >>> train = client_data.preprocess(lambda d: d.shuffle(100, seed=1).batch(20))
        """
        if not callable(preprocess_fn):
            raise TypeError(f"preprocess_fn must be callable, got {preprocess_fn!r}")
        return _PreprocessedClientData(self, preprocess_fn)

    def create_tf_dataset_from_all_clients(self, seed: Optional[int] = None) -> tf.data.Dataset:
        """All clients' examples in one dataset, client after client (clients shuffled by `seed`).

        Args:
            seed: shuffles the order of the clients; None keeps id order.

        Returns:
            One `tf.data.Dataset` (for centralized baselines and evaluation).
        """
        ids = np.array(self.client_ids, dtype=object)
        if seed is not None:
            np.random.RandomState(seed).shuffle(ids)
        return tf.data.Dataset.from_tensor_slices(ids.astype(bytes)).flat_map(self.serializable_dataset_fn)

    @classmethod
    def from_clients_and_tf_fn(cls, client_ids: Sequence[str], serializable_dataset_fn: DatasetFn) -> "ClientData":
        """A ClientData from ids and a TensorFlow function id -> dataset."""
        return _FunctionClientData(client_ids, serializable_dataset_fn)

    @staticmethod
    def train_test_client_split(
        client_data: "ClientData", num_test_clients: int, seed: Optional[int] = None
    ) -> Tuple["ClientData", "ClientData"]:
        """Splits the *clients* (not their examples) into a train and a test ClientData."""
        ids = list(client_data.client_ids)
        if not isinstance(num_test_clients, int) or not 1 <= num_test_clients < len(ids):
            raise ValueError(f"num_test_clients must be an int from 1 to {len(ids) - 1}, got {num_test_clients!r}")
        np.random.RandomState(seed).shuffle(ids)
        test_ids, train_ids = sorted(ids[:num_test_clients]), sorted(ids[num_test_clients:])
        return _SubsetClientData(client_data, train_ids), _SubsetClientData(client_data, test_ids)


def _cached_spec(client_data: ClientData, compute: Callable[[], Any]) -> Any:
    """Computes an element spec once, in a throwaway graph.

    `model_fn`s read `element_type_structure` while fedsim traces them; building the probe
    dataset in the graph being traced would put its ops (constants, even a Python generator)
    into the computation.
    """
    spec = getattr(client_data, "_element_spec_cache", None)
    if spec is None:
        with tf.Graph().as_default():
            spec = compute()
        client_data._element_spec_cache = spec
    return spec


def _check_ids(client_ids: Sequence[str], where: str) -> list:
    ids = list(client_ids)
    if not ids:
        raise ValueError(f"{where}: the list of client ids is empty")
    bad = [i for i in ids if not isinstance(i, str)]
    if bad:
        raise TypeError(f"{where}: client ids must be str, got {bad[0]!r}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{where}: client ids must be unique")
    return ids


class _FunctionClientData(ClientData):
    def __init__(self, client_ids: Sequence[str], dataset_fn: DatasetFn):
        if not callable(dataset_fn):
            raise TypeError(f"serializable_dataset_fn must be callable, got {dataset_fn!r}")
        self._ids = _check_ids(client_ids, "ClientData.from_clients_and_tf_fn")
        self._fn = dataset_fn

    @property
    def client_ids(self) -> list:
        return self._ids

    @property
    def serializable_dataset_fn(self) -> DatasetFn:
        return self._fn


class _SubsetClientData(ClientData):
    def __init__(self, base: ClientData, client_ids: Sequence[str]):
        self._base, self._ids = base, list(client_ids)

    @property
    def client_ids(self) -> list:
        return self._ids

    @property
    def serializable_dataset_fn(self) -> DatasetFn:
        return self._base.serializable_dataset_fn

    @property
    def element_type_structure(self) -> Any:
        return self._base.element_type_structure

    def _dataset_for_known_client(self, client_id: str) -> tf.data.Dataset:
        return self._base._dataset_for_known_client(client_id)


class _PreprocessedClientData(ClientData):
    def __init__(self, base: ClientData, preprocess_fn: Callable[[tf.data.Dataset], tf.data.Dataset]):
        self._base, self._fn = base, preprocess_fn

    @property
    def client_ids(self) -> list:
        return self._base.client_ids

    @property
    def serializable_dataset_fn(self) -> DatasetFn:
        base_fn, preprocess_fn = self._base.serializable_dataset_fn, self._fn
        return lambda client_id: preprocess_fn(base_fn(client_id))

    @property
    def element_type_structure(self) -> Any:
        # Apply the preprocessing to an empty dataset of the right spec: no client data is read.
        spec = self._base.element_type_structure

        def preprocessed_spec():
            empty = tf.data.Dataset.from_generator(lambda: iter(()), output_signature=spec)
            return self._fn(empty).element_spec

        return _cached_spec(self, preprocessed_spec)

    def _dataset_for_known_client(self, client_id: str) -> tf.data.Dataset:
        return self._fn(self._base._dataset_for_known_client(client_id))


class TestClientData(ClientData):
    """In-memory ClientData from `{client_id: arrays}` (any structure `from_tensor_slices` takes).

    `create_tf_dataset_for_client` slices the client's own arrays. The serializable form
    (`dataset_computation`, `create_tf_dataset_from_all_clients`) embeds every client's arrays
    in the graph as one constant per leaf plus an id -> (start, length) table, so keep it for
    data that fits comfortably in memory.

    Args:
        tensor_slices_dict: client id -> that client's arrays (one row per example).

    Raises:
        TypeError: if the argument is not a dict or the ids are not str.
        ValueError: if a client's arrays differ in length or structure from the others'.

    Example:
        >>> data = TestClientData({"a": {"x": np.zeros([3, 2])}, "b": {"x": np.ones([1, 2])}})
    """

    __test__ = False  # not a pytest test class, despite the TFF name

    def __init__(self, tensor_slices_dict: Mapping[str, Any]):
        if not isinstance(tensor_slices_dict, Mapping):
            raise TypeError(f"TestClientData takes a dict client_id -> arrays, got {type(tensor_slices_dict).__name__}")
        self._ids = _check_ids(tensor_slices_dict.keys(), "TestClientData")
        self._data = {}
        first_structure = None
        for client_id in self._ids:
            arrays = tf.nest.map_structure(np.asarray, tensor_slices_dict[client_id])
            leaves = tf.nest.flatten(arrays)
            lengths = {len(leaf) if leaf.ndim else -1 for leaf in leaves}
            if len(lengths) != 1 or -1 in lengths:
                raise ValueError(f"TestClientData: client {client_id!r} has arrays of different lengths or scalars: {sorted(lengths)}")
            if first_structure is None:
                first_structure = arrays
            else:
                try:
                    tf.nest.assert_same_structure(first_structure, arrays)
                except (ValueError, TypeError) as error:
                    raise ValueError(f"TestClientData: client {client_id!r} has a different structure from {self._ids[0]!r}: {error}") from None
            self._data[client_id] = arrays

    @property
    def client_ids(self) -> list:
        return self._ids

    def _dataset_for_known_client(self, client_id: str) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(self._data[client_id])

    @property
    def element_type_structure(self) -> Any:
        return _cached_spec(self, lambda: self._dataset_for_known_client(self._ids[0]).element_spec)

    @property
    def serializable_dataset_fn(self) -> DatasetFn:
        ids, data = self._ids, self._data
        structure = data[ids[0]]
        lengths = np.array([len(tf.nest.flatten(data[i])[0]) for i in ids], np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        leaves = [np.concatenate([tf.nest.flatten(data[i])[k] for i in ids]) for k in range(len(tf.nest.flatten(structure)))]

        def dataset_fn(client_id: tf.Tensor) -> tf.data.Dataset:
            matches = tf.equal(tf.constant(ids), client_id)
            index = tf.argmax(tf.cast(matches, tf.int32), output_type=tf.int32)
            start, length = tf.gather(tf.constant(starts), index), tf.gather(tf.constant(lengths), index)
            with tf.control_dependencies([tf.debugging.Assert(tf.reduce_any(matches), ["unknown client id", client_id])]):
                sliced = [tf.constant(leaf)[start : start + length] for leaf in leaves]
            return tf.data.Dataset.from_tensor_slices(tf.nest.pack_sequence_as(structure, sliced))

        return dataset_fn
