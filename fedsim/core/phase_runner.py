"""The one runner of canonical-form phases, wherever they run.

The reference runner (`run_round`), the aggregation handler (a Lambda), the silo agent and the
AWS context all call these functions, so a phase is fed and read the same way everywhere:
`prepare` on the server, `work` on each client, `Aggregation` folding client outputs with
zero/accumulate/merge/report, and `update` giving the result (and, through the form, the next
state).

Example::

    form = fedsim.compile_to_canonical_form(process.next)
    result = fedsim.core.phase_runner.run_round(form, state, client_datasets)
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import numpy as np

from fedsim.core import structure
from fedsim.core import tensorflow_computation as tfc
from fedsim.core.canonical_form import CanonicalForm

__all__ = ["prepare", "work", "Aggregation", "update", "run_round"]


def prepare(prepare_phase: tfc.TensorFlowComputation, state: Any) -> tuple:
    """`(broadcast, carry)` for a round starting from `state` (server side)."""
    state = structure.check_and_normalize(state, prepare_phase.type_signature.parameter, "the server state")
    broadcast, carry = prepare_phase.call_value(state)
    return broadcast, carry


def work(work_phase: tfc.TensorFlowComputation, client_input: Any, broadcast: Any, what: str = "the client's input",
         as_numpy: bool = True) -> Any:
    """One client's output: its input checked against the work phase's input type first
    (`as_numpy=False`: the output's tensors as the graph produced them, for a runtime that folds
    them in TensorFlow without copies)."""
    input_type = work_phase.type_signature.parameter[0]
    client_input = structure.check_and_normalize(client_input, input_type, what)
    return work_phase.call_value((client_input, broadcast), as_numpy)


class Aggregation:
    """Folds client outputs (in the order given) into the round's aggregates.

    With `merge_every=k > 0`, clients are accumulated in groups of k and the groups merged, as a
    distributed aggregation would.
    """

    def __init__(self, zero: tfc.TensorFlowComputation, accumulate: tfc.TensorFlowComputation,
                 merge: tfc.TensorFlowComputation, report: tfc.TensorFlowComputation, merge_every: int = 0):
        self.zero, self.accumulate_phase, self.merge, self.report = zero, accumulate, merge, report
        self.merge_every = merge_every
        self.count = 0
        self._group: Optional[Any] = None
        self._in_group = 0
        self._total: Optional[Any] = None

    @classmethod
    def of(cls, form: CanonicalForm, merge_every: int = 0) -> "Aggregation":
        return cls(form.zero, form.accumulate, form.merge, form.report, merge_every)

    def add(self, client_output: Any) -> None:
        group = self.zero.call_value(None) if self._group is None else self._group
        self._group = self.accumulate_phase.call_value((group, client_output))
        self._in_group += 1
        self.count += 1
        if self.merge_every and self._in_group == self.merge_every:
            self._close_group()

    def _close_group(self) -> None:
        if self._group is not None:
            self._total = self._group if self._total is None else self.merge.call_value((self._total, self._group))
            self._group, self._in_group = None, 0

    def result(self) -> Any:
        """The aggregates (report's result); zero clients give the report of zero."""
        self._close_group()
        return self.report.call_value(self.zero.call_value(None) if self._total is None else self._total)


def update(update_phase: tfc.TensorFlowComputation, carry: Any, aggregates: Any) -> Any:
    """The round's result (server side)."""
    return update_phase.call_value((carry, aggregates))


def run_round(form: CanonicalForm, server_state: Any, client_inputs: Iterable, merge_every: int = 0) -> Any:
    """Runs the phases in order on one machine: what any executor of the form must reproduce.

    Args:
        form: a `CanonicalForm`.
        server_state: the round's server state.
        client_inputs: one input per client (e.g. its dataset).
        merge_every: merge partial aggregates every this many clients (0: one accumulator),
            to exercise `merge` as distributed executors do.

    Returns:
        The round's result, as the original computation returns it.

    Raises:
        ValueError: if `client_inputs` is empty.
    """
    client_inputs = list(client_inputs)
    if not client_inputs:
        raise ValueError("run_canonical_form: the list of client inputs is empty")
    broadcast, carry = prepare(form.prepare, server_state)
    aggregation = Aggregation.of(form, merge_every)
    for index, client_input in enumerate(client_inputs):
        aggregation.add(work(form.work, client_input, broadcast, f"client {index}'s input"))
    return _scalars(update(form.update, carry, aggregation.result()))


def _scalars(value: Any) -> Any:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value[()]
    return value
