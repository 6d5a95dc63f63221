"""Saving a training process's state every few rounds, and resuming from the latest save.

Each version is one file in fedsim's value archive format (`fedsim.core.value_archive`: the
state's leaves as `.npz`, no pickle, the same codec as the AWS protocol's values), written to a
temporary name and renamed into place, so a crash never leaves a torn checkpoint. Loading packs
the leaves into the structure of a fresh `initialize()` and checks shapes and dtypes.

Example::

    manager = FileProgramStateManager("/tmp/run1/state", keep_total=3)
    state, round_num = manager.load_latest(process.initialize())
"""

from __future__ import annotations

import os
import re
from typing import Any, Optional, Tuple

import numpy as np
import tensorflow as tf

from fedsim.core import value_archive

__all__ = ["FileProgramStateManager", "ProgramStateError"]

_NAME = re.compile(r"^program_state_(\d+)\.npz$")


class ProgramStateError(ValueError):
    """A saved state does not fit the process it is loaded into."""


class FileProgramStateManager:
    """Versions of a program state in `root_dir`; keeps the newest `keep_total` (0 keeps all).

    Values are written as one `.npz` archive per version with fedsim's value codec: no pickle,
    so a saved state cannot run code when loaded.

    Args:
        root_dir: the directory of the saves (created if needed).
        keep_total: how many versions to keep (0 keeps all).

    Raises:
        ValueError: if `keep_total` is negative.

    Example:
        >>> manager = fedsim.simulation.FileProgramStateManager("/tmp/run1")
        >>> run_training_process(process, select, 10, program_state_manager=manager)
    """

    def __init__(self, root_dir: str, keep_total: int = 5):
        if keep_total < 0:
            raise ValueError(f"keep_total must be >= 0, got {keep_total}")
        self.root_dir = os.fspath(root_dir)
        self.keep_total = keep_total
        os.makedirs(self.root_dir, exist_ok=True)

    def versions(self) -> list:
        """The saved versions, ascending."""
        found = (_NAME.match(name) for name in os.listdir(self.root_dir))
        return sorted(int(match.group(1)) for match in found if match)

    def _path(self, version: int) -> str:
        return os.path.join(self.root_dir, f"program_state_{version}.npz")

    def save(self, program_state: Any, version: int) -> None:
        """Saves `program_state` as `version`, then drops versions beyond `keep_total`.

        Args:
            program_state: a structure of tensors or arrays (e.g. a process state).
            version: the version number (the round).
        """
        leaves = [np.asarray(leaf) for leaf in tf.nest.flatten(program_state)]
        partial = os.path.join(self.root_dir, f".partial-{version}-{os.getpid()}.npz")
        with open(partial, "wb") as stream:
            value_archive.encode_leaves(leaves, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(partial, self._path(version))
        if self.keep_total:
            for old in self.versions()[: -self.keep_total]:
                os.remove(self._path(old))

    def load(self, version: int, structure: Any) -> Any:
        """The state saved as `version`, packed like `structure` (e.g. `process.initialize()`).

        Args:
            version: a saved version.
            structure: a value of the state's structure and types.

        Returns:
            The saved state in `structure`'s containers.

        Raises:
            ProgramStateError: if the file cannot be read or does not fit `structure`.
        """
        path = self._path(version)
        expected = tf.nest.flatten(structure)
        specs = []
        for index, like in enumerate(expected):
            like = np.asarray(like)
            specs.append(value_archive.LeafSpec(like.dtype, like.shape, label=f"{like.dtype}{list(like.shape)}"))
        try:
            with open(path, "rb") as stream:
                data = stream.read()
        except OSError as error:
            raise ProgramStateError(f"{path}: cannot read the saved state ({error})") from None
        try:
            leaves = value_archive.decode_leaves(data, specs, f"{path}: cannot read the saved state's leaves as the process's")
        except value_archive.InvalidValueError as error:
            raise ProgramStateError(str(error)) from None
        return tf.nest.pack_sequence_as(structure, leaves)

    def load_latest(self, structure: Any) -> Tuple[Optional[Any], int]:
        """`(state, version)` of the newest save, or `(None, 0)` when there is none.

        Args:
            structure: a value of the state's structure and types.

        Returns:
            `(state, version)`.

        Raises:
            ProgramStateError: if the newest save does not fit `structure`.
        """
        versions = self.versions()
        if not versions:
            return None, 0
        return self.load(versions[-1], structure), versions[-1]
