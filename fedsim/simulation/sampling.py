"""Client sampling for simulation rounds: reproducible per round, independent of call order.

Example::

    sample = build_uniform_sampling_fn(train.client_ids, random_seed=0)
    cohort = sample(round_num=7, size=10)   # the same ten ids every time round 7 is asked for
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

__all__ = ["build_uniform_sampling_fn"]


def build_uniform_sampling_fn(
    sample_range: Sequence, replace: bool = False, random_seed: Optional[int] = None
) -> Callable[[int, int], list]:
    """`fn(round_num, size)`: `size` elements of `sample_range` drawn uniformly.

    With `random_seed` the draw depends only on `(random_seed, round_num)`, so a resumed run
    samples exactly the cohorts an uninterrupted one would have.

    Args:
        sample_range: the population (e.g. `client_data.client_ids`).
        replace: draw with replacement.
        random_seed: makes the draw deterministic per round; `None` draws fresh randomness.

    Returns:
        A function `(round_num, size) -> list` of drawn elements; it raises `ValueError` when
        asked for more distinct elements than the population holds.

    Raises:
        ValueError: if `sample_range` is empty.

    Example:
        >>> sample = fedsim.simulation.build_uniform_sampling_fn(client_data.client_ids, random_seed=1)
        >>> cohort = sample(3, 10)
    """
    population = list(sample_range)
    if not population:
        raise ValueError("build_uniform_sampling_fn: sample_range is empty")

    def sample(round_num: int, size: int) -> list:
        if not replace and size > len(population):
            raise ValueError(f"cannot sample {size} distinct clients out of {len(population)}; pass replace=True or a smaller size")
        seed = None if random_seed is None else [int(random_seed), int(round_num)]
        indices = np.random.default_rng(seed).choice(len(population), size=size, replace=replace)
        return [population[i] for i in indices]

    return sample
