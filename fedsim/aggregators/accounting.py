"""Privacy accounting: what a run of DP rounds spent, as (epsilon, delta).

Uses Google's `dp-accounting` package (install it with `pip install 'fedsim[dp]'`).

- `dp_epsilon`: epsilon of DP-FedAvg for (rounds, sampling rate, noise, delta), in one call.
- `PrivacyLedger`: the ledger a training loop keeps. Before each round it reads the mechanism
  the process's DP aggregators declare in their state (`dp_noise_multiplier`) and refuses the
  round that would take epsilon past its `PrivacyBudget`; after it, it records the mechanism
  the round's measurements report, with its sampling (every client, a fixed cohort of n out of
  N, or Poisson sampling at n/N), and reports `privacy/epsilon` (PLD accountant by default, RDP
  as an option).

Example::

    epsilon = dp_epsilon(noise_multiplier=1.0, sampling_rate=50 / 3400, rounds=1500, target_delta=1e-5)
    ledger = PrivacyLedger(population_size=3400, budget=PrivacyBudget(epsilon=8.0, delta=1e-5))
    simulation.run_training_process(process, select, 1500, privacy_ledger=ledger)
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

import attrs

__all__ = ["PrivacyBudget", "PrivacyLedger", "dp_epsilon", "declared_distributed_mechanisms", "declared_local_mechanisms",
           "declared_noise_multipliers"]

BUDGET_STOP = "privacy budget"  # how a stop reason given by the budget starts
NOISE_MULTIPLIER_NAME = "dp_noise_multiplier"  # what a DP aggregator's state and measurements call its mechanism
LOCAL_GAUSSIAN_NAME = "local_dp_noise_multiplier"  # ... and a local DP aggregator's (fedsim.aggregators.local_dp)
LOCAL_DISCRETE_LAPLACE_NAME = "local_dp_discrete_laplace"
DISTRIBUTED_NAME = "ddp_discrete_gaussian"  # ... and a distributed DP aggregator's (fedsim.aggregators.distributed_dp)


def dp_epsilon(noise_multiplier: float, sampling_rate: float, rounds: int, target_delta: float) -> float:
    """The epsilon after `rounds` rounds that each sample clients with probability `sampling_rate`.

    Poisson-sampled Gaussian mechanism, composed with dp-accounting's RDP accountant.

    Args:
        noise_multiplier: the noise's standard deviation over the clip norm (> 0).
        sampling_rate: the probability a client takes part in a round, in (0, 1].
        rounds: the number of rounds (>= 1).
        target_delta: delta, in (0, 1).

    Returns:
        Epsilon at `target_delta`.

    Raises:
        ValueError: if an argument is out of range.
        ImportError: if dp-accounting is not installed.

    Example:
        >>> fedsim.aggregators.dp_epsilon(1.0, 0.01, 1000, 1e-5)
    """
    if not (isinstance(noise_multiplier, (int, float)) and noise_multiplier > 0 and math.isfinite(noise_multiplier)):
        raise ValueError(f"dp_epsilon: noise_multiplier must be positive and finite, got {noise_multiplier!r}")
    if not 0 < sampling_rate <= 1:
        raise ValueError(f"dp_epsilon: sampling_rate must be in (0, 1], got {sampling_rate!r}")
    if not (isinstance(rounds, int) and rounds >= 1):
        raise ValueError(f"dp_epsilon: rounds must be a positive int, got {rounds!r}")
    if not 0 < target_delta < 1:
        raise ValueError(f"dp_epsilon: target_delta must be in (0, 1), got {target_delta!r}")
    dp_accounting = _dp_accounting()
    event = dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(event, rounds)
    return float(accountant.get_epsilon(target_delta))


def _dp_accounting():
    try:
        import dp_accounting
    except ImportError as error:
        raise ImportError("privacy accounting needs the dp-accounting package: pip install 'fedsim[dp]'") from error
    return dp_accounting


@attrs.frozen
class PrivacyBudget:
    """The most a run may spend: (epsilon, delta)-DP.

    Attributes:
        epsilon: the largest epsilon (> 0).
        delta: the delta it is measured at, in (0, 1).
    """

    epsilon: float = attrs.field(converter=float)
    delta: float = attrs.field(converter=float)

    def __attrs_post_init__(self) -> None:
        if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ValueError(f"PrivacyBudget: epsilon must be positive and finite, got {self.epsilon!r}")
        if not 0 < self.delta < 1:
            raise ValueError(f"PrivacyBudget: delta must be in (0, 1), got {self.delta!r}")


def _named_values(value: Any, name: str) -> list:
    """Every value found under the key `name` in a structure of mappings, attrs classes and
    sequences (or under a flattened metric name ending in `/name`)."""
    found = []
    if isinstance(value, dict) or hasattr(value, "items") and callable(value.items):
        for key, item in value.items():
            named = key == name or isinstance(key, str) and key.endswith("/" + name)
            found.extend([item] if named else _named_values(item, name))
    elif attrs.has(type(value)):
        found.extend(_named_values(attrs.asdict(value, recurse=False), name))
    elif isinstance(value, (list, tuple)):
        for item in value:
            found.extend(_named_values(item, name))
    return found


def declared_local_mechanisms(value: Any) -> list:
    """The local DP mechanisms (`fedsim.aggregators.local_dp`) a state declares or metrics
    report, as `("gaussian", noise_multiplier)` and `("discrete_laplace", a, sensitivity)`:
    what one client pays each round it takes part in.

    Args:
        value: a server state or a round's metrics.

    Returns:
        The mechanisms, in the structure's order.
    """
    found = [("gaussian", float(v)) for v in _named_values(value, LOCAL_GAUSSIAN_NAME)]
    for pair in _named_values(value, LOCAL_DISCRETE_LAPLACE_NAME):
        a, sensitivity = (float(x) for x in (pair if isinstance(pair, (list, tuple)) else list(pair)))
        found.append(("discrete_laplace", a, int(round(sensitivity))))
    return found


def declared_noise_multipliers(value: Any) -> list:
    """The noise multipliers a process's DP aggregators declare (in a state) or report (in
    measurements), as floats, in the structure's order.

    Args:
        value: a server state or a round's metrics.

    Returns:
        One float per DP aggregator (none: the process releases nothing privately).
    """
    return [float(v) for v in _named_values(value, NOISE_MULTIPLIER_NAME)]


def declared_distributed_mechanisms(value: Any) -> list:
    """The distributed discrete Gaussian mechanisms (`DistributedDpSumFactory`) a state declares
    or metrics report, as `(sigma, l2_sensitivity, l1_sensitivity, dim)` in the integer domain.

    Args:
        value: a server state or a round's metrics, nested or flattened (`a/ddp_discrete_gaussian/sigma`).

    Returns:
        The mechanisms, in the structure's order.
    """
    fields = ("sigma", "l2_sensitivity", "l1_sensitivity", "dim")
    found = [tuple(float(v[f]) for f in fields) for v in _named_values(value, DISTRIBUTED_NAME)]
    if isinstance(value, dict):  # flattened metrics: one scalar per field, grouped by the mechanism's name
        marker = f"{DISTRIBUTED_NAME}/"
        prefixes = sorted({key[:key.index(marker)] for key in value if isinstance(key, str) and marker in key})
        found.extend(tuple(float(value[f"{prefix}{marker}{f}"]) for f in fields) for prefix in prefixes)
    return found


def _rdp_epsilon(rounds: list, delta: float) -> float:
    """Epsilon of rounds with distributed discrete Gaussian mechanisms: Renyi DP composed over the
    rounds (Prop. 14 of Kairouz et al. 2021 for those, `alpha / (2 z^2)` for central Gaussian
    ones), converted by dp-accounting. No amplification by sampling is claimed (an upper bound)."""
    from dp_accounting.rdp import rdp_privacy_accountant

    from fedsim.aggregators.distributed_dp import ddgauss_rdp

    orders = list(rdp_privacy_accountant.DEFAULT_RDP_ORDERS)
    total = [0.0] * len(orders)
    for multipliers, cohort, distributed in rounds:
        terms = []
        if multipliers:
            if any(z <= 0 for z in multipliers):
                return math.inf
            z = sum(m**-2 for m in multipliers) ** -0.5
            terms.append([order / (2 * z**2) for order in orders])
        for sigma, l2, l1, dim in distributed:
            if sigma <= 0:
                return math.inf
            terms.append(list(ddgauss_rdp(orders, sigma, int(cohort), l2, l1, int(dim))))
        for term in terms:
            total = [t + x for t, x in zip(total, term)]
    if not any(total):
        return 0.0
    return float(rdp_privacy_accountant.compute_epsilon(orders, total, delta)[0])


def _local_event(mechanisms: tuple) -> Any:
    """One client's event in a round: its local mechanisms composed (none: nothing released)."""
    dp_accounting = _dp_accounting()
    events = []
    for mechanism in mechanisms:
        if mechanism[0] == "gaussian":
            events.append(dp_accounting.GaussianDpEvent(mechanism[1]) if mechanism[1] > 0 else dp_accounting.NonPrivateDpEvent())
        else:
            events.append(dp_accounting.DiscreteLaplaceDpEvent(mechanism[1], mechanism[2]))
    if not events:
        return dp_accounting.NoOpDpEvent()
    return events[0] if len(events) == 1 else dp_accounting.ComposedDpEvent(events)


def _spent(accountant: Any, events: list, delta: float) -> float:
    """Epsilon at `delta` after `events` (one per round); identical consecutive rounds compose as
    one self-composition, as dp-accounting composes `compose(event, count)`."""
    runs: list = []
    for event in events:
        if runs and runs[-1][0] == event:
            runs[-1][1] += 1
        else:
            runs.append([event, 1])
    for event, count in runs:
        accountant.compose(event, count)
    return float(accountant.get_epsilon(delta))


class PrivacyLedger:
    """The DP events of a run's rounds, and what they cost.

    Each round is one event: the Gaussian mechanism of the round's DP aggregators (several
    compose into one Gaussian, exactly, with noise multiplier `(sum z_i^-2)^-1/2`), amplified by
    the round's sampling. Epsilon is dp-accounting's, at `budget.delta` (or `delta`).

    Args:
        population_size: N, the clients a round's cohort is drawn from (None: every client
            takes part in every round, as silos do; no amplification).
        sampling: "poisson" (each client in a round with probability n/N, DP-FedAvg's
            analysis) or "fixed" (a uniform cohort of n out of N; RDP accountant only).
        accountant: "pld" (privacy loss distributions, tight) or "rdp" (Renyi DP).
        budget: stop before the round that would take epsilon past it (None: only account).
        delta: the delta epsilon is reported at without a budget.

    Raises:
        ValueError: an argument is out of range or the combination cannot be accounted.

    Example::

        ledger = PrivacyLedger(population_size=1000, budget=PrivacyBudget(8.0, 1e-5))
        state = simulation.run_training_process(process, select, 500, privacy_ledger=ledger)
        ledger.epsilon(), ledger.stop_reason
    """

    def __init__(self, population_size: Optional[int] = None, sampling: str = "poisson", accountant: str = "pld",
                 budget: Optional[PrivacyBudget] = None, delta: float = 1e-5):
        if population_size is not None and not (isinstance(population_size, int) and population_size >= 1):
            raise ValueError(f"PrivacyLedger: population_size must be a positive int or None, got {population_size!r}")
        if sampling not in ("poisson", "fixed"):
            raise ValueError(f"PrivacyLedger: sampling is 'poisson' or 'fixed', got {sampling!r}")
        if accountant not in ("pld", "rdp"):
            raise ValueError(f"PrivacyLedger: accountant is 'pld' or 'rdp', got {accountant!r}")
        if sampling == "fixed" and population_size is not None and accountant == "pld":
            raise ValueError("PrivacyLedger: dp-accounting's PLD accountant has no analysis of fixed-size cohorts "
                             "(sampling without replacement); use accountant='rdp', or sampling='poisson'")
        if budget is not None and not isinstance(budget, PrivacyBudget):
            raise TypeError(f"PrivacyLedger: budget is a PrivacyBudget, got {budget!r}")
        self.population_size, self.sampling, self.accountant, self.budget = population_size, sampling, accountant, budget
        self.delta = budget.delta if budget is not None else float(delta)
        if not 0 < self.delta < 1:
            raise ValueError(f"PrivacyLedger: delta must be in (0, 1), got {delta!r}")
        self.rounds: list = []  # (round, noise multipliers, cohort size, local mechanisms, distributed ones), as recorded
        self.stop_reason: Optional[str] = None

    def to_json(self) -> dict:
        """The ledger's settings (not its rounds), as a run's manifest carries them to the handler."""
        return {"population_size": self.population_size, "sampling": self.sampling, "accountant": self.accountant,
                "delta": self.delta, "budget": None if self.budget is None else [self.budget.epsilon, self.budget.delta]}

    @classmethod
    def from_json(cls, document: Any) -> "PrivacyLedger":
        """A ledger with the settings `to_json` wrote (and no rounds yet).

        Args:
            document: the JSON value.

        Returns:
            The ledger.

        Raises:
            ValueError: a setting is missing or malformed.
        """
        if not isinstance(document, dict):
            raise ValueError(f"a privacy ledger's settings are a JSON object, got {str(document)[:200]}")
        budget = document.get("budget")
        try:
            return cls(population_size=document.get("population_size"), sampling=document.get("sampling", "poisson"),
                       accountant=document.get("accountant", "pld"), delta=document.get("delta", 1e-5),
                       budget=None if budget is None else PrivacyBudget(*budget))
        except TypeError as error:
            raise ValueError(f"a privacy ledger's settings are malformed: {error}") from None

    def event(self, noise_multipliers: list, cohort_size: int) -> Any:
        """The dp-accounting event of one round.

        Args:
            noise_multipliers: the round's DP aggregators' noise multipliers.
            cohort_size: the clients in the round (n).

        Returns:
            A `dp_accounting.DpEvent` (`NoOpDpEvent` for a round with no DP aggregator).

        Raises:
            ValueError: the cohort is larger than the population.
        """
        dp_accounting = _dp_accounting()
        if not noise_multipliers:
            return dp_accounting.NoOpDpEvent()
        if any(z <= 0 for z in noise_multipliers):
            return dp_accounting.NonPrivateDpEvent()  # a release without noise: no finite epsilon
        mechanism = dp_accounting.GaussianDpEvent(sum(z**-2 for z in noise_multipliers) ** -0.5)
        if self.population_size is None:
            return mechanism
        if not 1 <= cohort_size <= self.population_size:
            raise ValueError(f"PrivacyLedger: a cohort of {cohort_size} from a population of {self.population_size}")
        if self.sampling == "poisson":
            return dp_accounting.PoissonSampledDpEvent(cohort_size / self.population_size, mechanism)
        return dp_accounting.SampledWithoutReplacementDpEvent(self.population_size, cohort_size, mechanism)

    def epsilon(self, extra: tuple = ()) -> float:
        """Epsilon at the ledger's delta after the recorded rounds (and `extra` ones).

        With distributed DP rounds (`DistributedDpSumFactory`) the run is accounted in Renyi DP
        (the mechanism's own analysis), without amplification by sampling.

        Args:
            extra: `(noise_multipliers, cohort_size[, local mechanisms[, distributed ones]])` of
                rounds not yet run.

        Returns:
            Epsilon (0 before any private release; inf after a release without noise).
        """
        dp_accounting = _dp_accounting()
        distributed = [(list(m), n, tuple(d)) for _, m, n, _, d in self.rounds] + [
            (list(entry[0]), entry[1], tuple(entry[3]) if len(entry) > 3 else ()) for entry in extra]
        if any(d for *_, d in distributed):
            return _rdp_epsilon(distributed, self.delta)
        if self.accountant == "pld":
            accountant = dp_accounting.pld.PLDAccountant()
        else:
            relation = (dp_accounting.NeighboringRelation.REPLACE_ONE if self.sampling == "fixed" and self.population_size
                        else dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
            accountant = dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
        rounds = [(m, n) for _, m, n, *_ in self.rounds] + [(m, n) for m, n, *_ in extra]
        return _spent(accountant, [self.event(list(m), n) for m, n in rounds], self.delta)

    def local_epsilon(self, extra: tuple = ()) -> float:
        """Epsilon, at the ledger's delta, of one client that took part in every recorded round
        (and the `extra` ones) under the local DP mechanisms they report: what the most exposed
        client has spent. No sampling amplifies it: the server sees who sent what.

        Args:
            extra: `(noise_multipliers, cohort_size, local mechanisms)` of rounds not yet run.

        Returns:
            Epsilon (0 without local mechanisms).
        """
        dp_accounting = _dp_accounting()
        rounds = [entry[3] for entry in self.rounds] + [tuple(entry[2]) if len(entry) > 2 else () for entry in extra]
        return _spent(dp_accounting.pld.PLDAccountant(), [_local_event(local) for local in rounds], self.delta)

    def save(self, path: str) -> None:
        """Writes the recorded rounds to `path` as JSON, atomically (a resumed run reads them back).

        Args:
            path: the file.
        """
        document = [[r, list(m), n, [list(x) for x in local], [list(x) for x in distributed]]
                    for r, m, n, local, distributed in self.rounds]
        partial = f"{path}.partial-{os.getpid()}"
        with open(partial, "w") as stream:
            json.dump(document, stream)
        os.replace(partial, path)

    def restore(self, path: str, up_to_round: int) -> None:
        """Replaces the recorded rounds with those `save` wrote, up to `up_to_round`.

        Args:
            path: the file `save` wrote.
            up_to_round: the last round the resumed state includes.

        Raises:
            ValueError: the file does not hold every round up to `up_to_round` (epsilon would be
                understated).
            OSError: the file cannot be read.
        """
        with open(path) as stream:
            document = json.load(stream)
        rounds = [(int(r), [float(z) for z in m], int(n), tuple(tuple(x) for x in local),
                   tuple(tuple(float(v) for v in x) for x in (rest[0] if rest else ())))
                  for r, m, n, local, *rest in document if int(r) <= up_to_round]
        if [r for r, *_ in rounds] != list(range(1, up_to_round + 1)):
            raise ValueError(f"the privacy ledger {path} holds rounds {[r for r, *_ in rounds]}, not 1..{up_to_round}: "
                             f"a resumed run's epsilon would be understated")
        self.rounds = rounds

    def replay(self, rounds: list, stop_reason: Optional[str] = None) -> None:
        """Replaces the recorded rounds with a run's (e.g. what a serverless run's handler kept).

        Args:
            rounds: `(round, metrics, cohort size)` of each round that ran.
            stop_reason: the run's stop reason; kept when the budget stopped it.
        """
        self.rounds = []
        for round_num, metrics, cohort in rounds:
            self.record(round_num, metrics, cohort, account=False)
        if stop_reason and stop_reason.startswith(BUDGET_STOP):
            self.stop_reason = stop_reason

    def refusal(self, state: Any, cohort_size: int) -> Optional[str]:
        """Why the next round may not run (its mechanism, declared in `state`, would take epsilon
        past the budget), or None. The reason is kept as `stop_reason`.

        Args:
            state: the server state the round would start from.
            cohort_size: the clients it would have.

        Returns:
            The reason, or None.
        """
        if self.budget is None:
            return None
        upcoming = ((declared_noise_multipliers(state), cohort_size, tuple(declared_local_mechanisms(state)),
                     tuple(declared_distributed_mechanisms(state))),)
        for what, spent in (("epsilon", self.epsilon), ("a client's local epsilon", self.local_epsilon)):
            after = spent(extra=upcoming)
            if after > self.budget.epsilon:
                self.stop_reason = (f"{BUDGET_STOP}: round {len(self.rounds) + 1} would take {what} from {spent():.6g} to "
                                    f"{after:.6g}, past the budget of {self.budget.epsilon:g} at delta {self.budget.delta:g}")
                return self.stop_reason
        return None

    def record(self, round_num: int, metrics: Any, cohort_size: int, account: bool = True) -> dict:
        """Records a round that ran, with the mechanism its measurements report.

        Args:
            round_num: the round.
            metrics: its metrics (the DP aggregators' measurements among them, nested or
                flattened to `a/b/dp_noise_multiplier`).
            cohort_size: the clients it had.
            account: whether to compute what was spent (False when replaying a history).

        Returns:
            `{"epsilon": ..., "delta": ...}` (and `local_epsilon` once a local DP mechanism ran):
            what the run has spent so far (`privacy/...` metrics); `{}` without `account`.
        """
        local = tuple(declared_local_mechanisms(metrics))
        distributed = tuple(declared_distributed_mechanisms(metrics))
        self.rounds.append((round_num, declared_noise_multipliers(metrics), int(cohort_size), local, distributed))
        if not account:
            return {}
        spent = {"epsilon": self.epsilon(), "delta": self.delta}
        if any(entry[3] for entry in self.rounds):
            spent["local_epsilon"] = self.local_epsilon()
        return spent
