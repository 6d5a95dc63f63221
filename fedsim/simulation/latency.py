"""How long each client takes to train, on a virtual clock: a seeded latency model.

Asynchronous and synchronous training differ in *when* updates arrive, which on one machine
is not the time the simulation takes. A `LatencyModel` gives each client a training time in
virtual seconds: a base time, a fixed set of slow clients (`slow_fraction` of the population,
`slow_factor` times slower) and optional log-normal jitter per task. It depends only on its
seed, so runs are reproducible.

Example::

    latency = fedsim.simulation.LatencyModel(client_ids, slow_fraction=0.1, slow_factor=10.0, seed=0)
    latency.seconds("client_7", task=3)       # one training task
    latency.round_seconds(cohort, round_num=5)  # a synchronous round waits for its slowest client
"""

from __future__ import annotations

import hashlib
import math
from typing import Sequence

import attrs
import numpy as np

__all__ = ["LatencyModel"]


def _check_positive(instance, attribute, value) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"LatencyModel: {attribute.name} must be a positive number, got {value!r}")


def _check_fraction(instance, attribute, value) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"LatencyModel: {attribute.name} must be in [0, 1], got {value!r}")


def _check_jitter(instance, attribute, value) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"LatencyModel: {attribute.name} must be a non-negative number, got {value!r}")


@attrs.frozen
class LatencyModel:
    """Virtual training time per client and task: base, slow clients, jitter; deterministic for a seed.

    Attributes:
        client_ids: the population.
        base_seconds: a normal client's training time.
        slow_fraction: the fraction of the population that is slow (rounded to the nearest client).
        slow_factor: how many times slower a slow client is.
        jitter: the standard deviation of the log-normal factor on each task's time (0: none).
        seed: fixes which clients are slow and the jitter.
    """

    client_ids: tuple = attrs.field(converter=tuple)
    base_seconds: float = attrs.field(default=1.0, validator=_check_positive)
    slow_fraction: float = attrs.field(default=0.0, validator=_check_fraction)
    slow_factor: float = attrs.field(default=10.0, validator=_check_positive)
    jitter: float = attrs.field(default=0.0, validator=_check_jitter)
    seed: int = 0
    slow_clients: frozenset = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if not self.client_ids:
            raise ValueError("LatencyModel: the population is empty")
        order = np.random.RandomState(self.seed).permutation(len(self.client_ids))
        count = int(round(self.slow_fraction * len(self.client_ids)))
        ids = sorted(self.client_ids)
        object.__setattr__(self, "slow_clients", frozenset(ids[i] for i in order[:count]))

    def seconds(self, client_id: str, task: int) -> float:
        """The virtual seconds `client_id` takes for its training task number `task`.

        Args:
            client_id: a client of the population.
            task: any int naming the task (the same pair always gives the same time).

        Returns:
            The time in virtual seconds.
        """
        seconds = self.base_seconds * (self.slow_factor if client_id in self.slow_clients else 1.0)
        if self.jitter:
            digest = hashlib.sha256(f"{self.seed}/{client_id}/{task}".encode()).digest()
            rng = np.random.RandomState(int.from_bytes(digest[:4], "little"))
            seconds *= math.exp(self.jitter * rng.standard_normal())
        return seconds

    def round_seconds(self, cohort: Sequence[str], round_num: int) -> float:
        """A synchronous round's time: its slowest client's.

        Args:
            cohort: the round's clients.
            round_num: the round (names the tasks, `round_num * len(cohort) + position`).

        Returns:
            The round's virtual seconds.
        """
        return max(self.seconds(client, round_num * len(cohort) + i) for i, client in enumerate(cohort))
