"""Runtime values of the local context: client values as per-client recipes, lazy server values.

A CLIENTS value is never materialized for all clients at once: it is a `ClientValues` recipe
computed client by client. A SERVER value may be `Lazy` (computed when first needed) or
`Deferred` (waiting for an aggregation pass over the clients).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional, Sequence

import attrs
import numpy as np
import tensorflow as tf

from fedsim.core import building_blocks, structure
from fedsim.core import types as ft
from fedsim.core.evaluator import Closure

__all__ = [
    "ClientValues",
    "ListClients",
    "AllEqualClients",
    "MappedClients",
    "EvalClients",
    "ZippedClients",
    "Lazy",
    "Deferred",
    "force_all",
    "unforced",
    "waits_for_a_pass",
]


class ClientValues:
    """A value placed at CLIENTS, computed per client on demand.

    `compute(index, memo)` returns client `index`'s member; `memo` is private to one client's
    task, so a recipe used by several aggregations is computed once per client per pass.
    """

    count: Optional[int] = None

    def compute(self, index: int, memo: dict) -> Any:
        raise NotImplementedError

    def dependencies(self) -> list:
        """Server values not yet computed that this recipe needs (forced before a pass)."""
        return []

    def given(self) -> list:
        """The `ListClients` (values the caller gave) this recipe reads."""
        return []


class ListClients(ClientValues):
    def __init__(self, members: Sequence, member_type: ft.Type, what: str, checked: bool):
        self.members = members
        self.member_type = member_type
        self.what = what
        self.checked = checked
        self.count = len(members)

    def compute(self, index, memo):
        key = ("given", id(self))
        if key in memo:  # read ahead for this client (the runtime's producer)
            return memo[key]
        member = self.members[index]
        if not self.checked:
            member = structure.check_and_normalize(member, self.member_type, f"client {index} of {self.what}")
        memo[key] = member
        return member

    def given(self):
        return [self]


class AllEqualClients(ClientValues):
    """One value for every client (a broadcast). Its numpy leaves become tensors once, not once
    per client (a model's weights are copied into TensorFlow once a round)."""

    def __init__(self, value: Any):
        self.value = value
        self._tensors: Any = _UNSET

    def compute(self, index, memo):
        if self._tensors is _UNSET:
            self._tensors = _as_tensors(force_all(self.value))
        return self._tensors

    def dependencies(self):
        return unforced(self.value)


class MappedClients(ClientValues):
    def __init__(self, fn: Callable, source: ClientValues):
        self.fn = fn
        self.source = source
        self.count = source.count

    def compute(self, index, memo):
        key = id(self)
        if key not in memo:
            memo[key] = self.fn(self.source.compute(index, memo))
        return memo[key]

    def dependencies(self):
        return self.source.dependencies()

    def given(self):
        return self.source.given()


class EvalClients(ClientValues):
    def __init__(self, fn: Callable):
        self.fn = fn

    def compute(self, index, memo):
        key = id(self)
        if key not in memo:
            memo[key] = self.fn()
        return memo[key]


class ZippedClients(ClientValues):
    def __init__(self, elements: list, member_type: ft.StructType):
        self.elements = elements
        self.member_type = member_type
        counts = {e.count for e in elements if e.count is not None}
        self.count = counts.pop() if len(counts) == 1 else None
        if counts:
            raise ValueError(f"cannot zip client values with different numbers of clients: {sorted(counts | {self.count})}")

    def compute(self, index, memo):
        return structure.pack_struct(self.member_type, [e.compute(index, memo) for e in self.elements])

    def dependencies(self):
        return [d for e in self.elements for d in e.dependencies()]

    def given(self):
        return [g for e in self.elements for g in e.given()]


class Lazy:
    """A SERVER value computed when first needed.

    Server work is lazy so that by the time any aggregation is needed, every aggregation of
    the round has been registered and one pass over the clients serves them all.
    """

    def __init__(self, thunk: Callable[[], Any], inputs: Optional[list] = None):
        self.thunk = thunk
        self.inputs = inputs  # what the thunk reads (None: unknown)
        self.done = False
        self.value = None
        self.lock = threading.Lock()

    def force(self) -> Any:
        if not self.done:
            with self.lock:
                if not self.done:
                    self.value = self.thunk()
                    self.done = True
                    self.thunk = None
                    self.inputs = None
        return self.value


class Deferred(Lazy):
    """A SERVER value waiting for an aggregation pass over the clients.

    `run_pass(deferred)` computes it (with every other pending aggregation that is ready).
    """

    def __init__(self, run_pass: Callable[["Deferred"], None], sources: list, accumulator_fn: Callable):
        super().__init__(lambda: run_pass(self), inputs=None)
        self.sources = sources
        self.accumulator_fn = accumulator_fn

    def force(self) -> Any:
        if not self.done:
            self.thunk()
        return self.value

    def ready(self) -> bool:
        return not any(s.dependencies() for s in self.sources)


_UNSET = object()


def _as_tensors(value: Any) -> Any:
    """A structure with its numpy arrays as (eager) tensors."""
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype != object:
        return tf.convert_to_tensor(value)
    if isinstance(value, dict):
        return type(value)((k, _as_tensors(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        converted = [_as_tensors(v) for v in value]
        return type(value)(*converted) if hasattr(type(value), "_fields") else type(value)(converted)
    if hasattr(type(value), "__attrs_attrs__"):
        return attrs.evolve(value, **{f.name: _as_tensors(getattr(value, f.name)) for f in attrs.fields(type(value)) if f.init})
    return value


def unforced(value: Any) -> list:
    """The lazy server values inside a structure that are not computed yet."""
    if isinstance(value, Lazy):
        return [] if value.done else [value]
    if isinstance(value, dict):
        return [u for v in value.values() for u in unforced(v)]
    if isinstance(value, (list, tuple)):
        return [u for v in value for u in unforced(v)]
    if hasattr(type(value), "__attrs_attrs__"):
        return [u for f in type(value).__attrs_attrs__ for u in unforced(getattr(value, f.name))]
    return []


def waits_for_a_pass(value: Any, seen: Optional[set] = None) -> bool:
    """Whether computing `value` may need an aggregation pass not yet run.

    False only when every input a lazy value reads is known and none of them is (or reads) a
    `Deferred` still waiting: such a value can be computed before a pass, so that the
    aggregations it feeds join that pass instead of needing one of their own. Values whose
    inputs are unknown count as waiting.

    Args:
        value: a runtime value (lazy, deferred, client recipe, IR closure or a structure of them).
        seen: ids already visited (for shared inputs and cycles).

    Returns:
        True when `value` may need a pass that has not run.

    Example:
        >>> waits_for_a_pass(Lazy(lambda: 1, inputs=[]))
        False
    """
    seen = set() if seen is None else seen
    if id(value) in seen:
        return False
    seen.add(id(value))
    if isinstance(value, Deferred):
        return not value.done
    if isinstance(value, Lazy):
        if value.done:
            return False
        return value.inputs is None or any(waits_for_a_pass(v, seen) for v in value.inputs)
    if isinstance(value, ClientValues):
        return any(waits_for_a_pass(v, seen) for v in value.dependencies())
    if isinstance(value, Closure):  # a lambda of the IR reads the names free in it
        try:
            read = [value.env.lookup(name) for name in building_blocks.free_names(value.block)]
        except NameError:
            return True
        return any(waits_for_a_pass(v, seen) for v in read)
    if isinstance(value, dict):
        return any(waits_for_a_pass(v, seen) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(waits_for_a_pass(v, seen) for v in value)
    if hasattr(type(value), "__attrs_attrs__"):
        return any(waits_for_a_pass(getattr(value, f.name), seen) for f in type(value).__attrs_attrs__)
    return False


def force_all(value: Any) -> Any:
    """Replaces lazy server values inside a structure by their results."""
    if isinstance(value, Lazy):
        return force_all(value.force())
    if isinstance(value, dict):
        if any(isinstance(v, (Lazy, dict, list, tuple)) or hasattr(type(v), "__attrs_attrs__") for v in value.values()):
            return type(value)((k, force_all(v)) for k, v in value.items())
        return value
    if isinstance(value, (list, tuple)) and any(isinstance(v, (Lazy, dict, list, tuple)) or hasattr(type(v), "__attrs_attrs__") for v in value):
        forced = [force_all(v) for v in value]
        if hasattr(type(value), "_fields"):
            return type(value)(*forced)
        return type(value)(forced)
    if hasattr(type(value), "__attrs_attrs__"):
        return attrs.evolve(value, **{f.name: force_all(getattr(value, f.name)) for f in attrs.fields(type(value)) if f.init})
    return value
