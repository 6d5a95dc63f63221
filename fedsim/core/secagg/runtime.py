"""How a runtime computes the secure-sum intrinsics: exactly, or by running the protocol.

`federated_secure_sum_bitwidth` and `federated_secure_sum` promise that the server learns only
the sum. The local context computes that sum exactly by default (`ExactSecureSum`: results equal
to the protocol's, at no cost). `SecureSumProtocol` runs the real protocol among the simulated
clients, with the same code the silos run, so that its cost and its behaviour under dropouts can
be measured without a stack:

    context = LocalExecutionContext(secure_aggregation=SecureSumProtocol(neighbours=4, drop_rate=0.1))

Each client's integer leaves are packed into one vector modulo `2**k`, where `k` is the
largest leaf bitwidth plus the bits the sum of `n` clients needs, so the protocol's sum is the
exact sum. Clients the protocol lost (dropouts) are not in the sum, as in a deployment.
"""

from __future__ import annotations

import math
import random
from typing import Any, Optional, Union

import attrs
import numpy as np

from fedsim.core import aggregations, structure
from fedsim.core.secagg import simulation, vectors

__all__ = ["ExactSecureSum", "SecureSumProtocol", "secure_sum_runtime"]


@attrs.define
class ExactSecureSum:
    """The exact sum, checked value by value against the intrinsic's range (the default)."""

    def accumulator(self, definition: Any, group_size: int) -> Any:
        return aggregations.streaming(definition, group_size)


@attrs.define
class SecureSumProtocol:
    """Runs SecAgg (or SecAgg+, with `neighbours`) among the simulated clients.

    Attributes:
      threshold_fraction: the threshold is `ceil(fraction * clients)` (at least 1).
      neighbours: None for SecAgg; an even neighbourhood size for SecAgg+.
      drop_rate: each client dies with this probability at a random step (0: none).
      seed: for the dropout draws.
      outcomes: each session's `simulation.ProtocolOutcome` (bytes sent, who was included).
    """

    threshold_fraction: float = 2 / 3
    neighbours: Optional[int] = None
    drop_rate: float = 0.0
    seed: Optional[int] = None
    outcomes: list = attrs.field(factory=list)

    def accumulator(self, definition: Any, group_size: int) -> "_ProtocolAccumulator":
        return _ProtocolAccumulator(self, definition)

    def threshold(self, clients: int) -> int:
        return max(1, math.ceil(self.threshold_fraction * clients))


class _ProtocolAccumulator:
    """Collects each client's packed input (range-checked), runs one session at `result()`."""

    def __init__(self, runtime: SecureSumProtocol, definition: aggregations.SecureSum):
        self.runtime, self.definition = runtime, definition
        self.inputs: list = []

    def add(self, client_input: Any) -> None:
        leaves = [np.asarray(leaf) for leaf in structure.flatten_value(client_input, self.definition.input_type)]
        for leaf, (largest, shown) in zip(leaves, self.definition._ranges()):
            if leaf.size and (leaf.min() < 0 or leaf.max() > largest):
                raise ValueError(f"client {len(self.inputs)}: {self.definition.intrinsic}: sent values outside {shown}")
        self.inputs.append(vectors.pack(leaves, max(self.definition.bitwidths)))

    def result(self) -> Any:
        shapes = [tuple(leaf.shape) for leaf in self.definition.leaves]
        if not self.inputs:
            total = np.zeros(sum(int(np.prod(s, dtype=np.int64)) for s in shapes), np.uint64)
        else:
            clients = len(self.inputs)
            bits = max(self.definition.bitwidths) + max(1, math.ceil(math.log2(clients + 1)))
            if bits > 64:
                raise ValueError(f"{self.definition.intrinsic}: a sum of {clients} values of {max(self.definition.bitwidths)} bits "
                                 f"does not fit 64 bits")
            names = [f"client-{i:06d}" for i in range(clients)]
            draw = random.Random(self.runtime.seed)
            drop = {name: draw.choice(simulation.DROP_POINTS) for name in names if draw.random() < self.runtime.drop_rate}
            neighbours = self.runtime.neighbours if self.runtime.neighbours and self.runtime.neighbours < clients - 1 else None
            outcome = simulation.run_protocol(dict(zip(names, self.inputs)), self.runtime.threshold(clients), bits,
                                              neighbours=neighbours, drop=drop, session=f"local-{len(self.runtime.outcomes)}")
            self.runtime.outcomes.append(outcome)
            total = outcome.total
        leaves = vectors.unpack(total, shapes)
        values = [leaf.astype(leaf_type.dtype.as_numpy_dtype) for leaf, leaf_type in zip(leaves, self.definition.leaves)]
        return structure.unflatten_value(self.definition.result_type, values)


def secure_sum_runtime(choice: Union[str, ExactSecureSum, SecureSumProtocol, None]) -> Any:
    """`"exact"` (or None) -> `ExactSecureSum()`; `"protocol"` -> `SecureSumProtocol()`; an
    instance of either passes through.

    Raises:
      ValueError: any other value.
    """
    if choice is None or choice == "exact":
        return ExactSecureSum()
    if choice == "protocol":
        return SecureSumProtocol()
    if isinstance(choice, (ExactSecureSum, SecureSumProtocol)):
        return choice
    raise ValueError(f"secure_aggregation must be 'exact', 'protocol' or a SecureSumProtocol, not {choice!r}")

