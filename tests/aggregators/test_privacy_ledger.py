"""The privacy ledger: each DP round's mechanism recorded, epsilon as dp-accounting computes it,
and a budget that stops the run before the round that would exceed it.

The reference is dp-accounting itself, driven directly with the events the issue names (a
Gaussian mechanism per round, Poisson- or fixed-cohort-sampled), never the ledger's own code.
"""

import collections
import csv

import dp_accounting
import keras
import numpy as np
import pytest
import tensorflow as tf

from fedsim import aggregators, learning, simulation
from fedsim.learning import optimizers

POPULATION, COHORT, Z, DELTA = 20, 4, 1.3, 1e-5
SPEC = collections.OrderedDict(x=tf.TensorSpec([None, 3], tf.float32), y=tf.TensorSpec([None], tf.int32))


def _model_fn():
    return learning.from_keras_model(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), input_spec=SPEC,
                                     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def _datasets():
    rng = np.random.RandomState(0)
    return [tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
        x=rng.randn(6, 3).astype(np.float32), y=rng.randint(0, 2, 6).astype(np.int32))).batch(3) for _ in range(POPULATION)]


@pytest.fixture(scope="module")
def fixed_dp_process():
    factory = aggregators.DifferentiallyPrivateFactory.gaussian_fixed(noise_multiplier=Z, clients_per_round=COHORT, clip=0.5,
                                                                      noise_seed=1)
    return learning.build_unweighted_fed_avg(_model_fn, lambda: optimizers.build_sgdm(0.1), model_aggregator=factory)


def _run(process, ledger, rounds, tmp_path=None):
    datasets = _datasets()
    sample = simulation.build_uniform_sampling_fn(list(range(POPULATION)), random_seed=0)
    history = simulation.History()
    managers = [simulation.CSVMetricsManager(str(tmp_path / "metrics.csv"))] if tmp_path else []
    simulation.run_training_process(process, lambda r: [datasets[i] for i in sample(r, COHORT)], rounds,
                                    callbacks=[history], metrics_managers=managers, privacy_ledger=ledger, verbose=0)
    return history


def _reference(event, rounds, accountant):
    accountant.compose(event, rounds)
    return accountant.get_epsilon(DELTA)


def test_epsilon_after_every_round_is_dp_accountings_own_pld_figure(fixed_dp_process, tmp_path):
    history = _run(fixed_dp_process, aggregators.PrivacyLedger(population_size=POPULATION, delta=DELTA), 4, tmp_path)
    event = dp_accounting.PoissonSampledDpEvent(COHORT / POPULATION, dp_accounting.GaussianDpEvent(Z))
    expected = [_reference(event, r, dp_accounting.pld.PLDAccountant()) for r in range(1, 5)]
    assert history.history["privacy/epsilon"] == pytest.approx(expected, abs=1e-9, rel=0)
    assert history.history["privacy/delta"] == [DELTA] * 4
    assert history.history["training/aggregator/dp_noise_multiplier"] == pytest.approx([Z] * 4)
    with open(tmp_path / "metrics.csv") as stream:  # the metric reaches the metrics managers too
        rows = list(csv.DictReader(stream))
    assert [float(row["privacy/epsilon"]) for row in rows] == pytest.approx(expected, abs=1e-9, rel=0)


def test_fixed_cohorts_are_accounted_with_rdp_sampling_without_replacement(fixed_dp_process):
    ledger = aggregators.PrivacyLedger(population_size=POPULATION, sampling="fixed", accountant="rdp", delta=DELTA)
    history = _run(fixed_dp_process, ledger, 3)
    event = dp_accounting.SampledWithoutReplacementDpEvent(POPULATION, COHORT, dp_accounting.GaussianDpEvent(Z))
    relation = dp_accounting.NeighboringRelation.REPLACE_ONE
    expected = [_reference(event, r, dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)) for r in (1, 2, 3)]
    assert history.history["privacy/epsilon"] == pytest.approx(expected, abs=1e-9, rel=0)
    with pytest.raises(ValueError, match="PLD accountant has no analysis of fixed-size cohorts"):
        aggregators.PrivacyLedger(population_size=POPULATION, sampling="fixed")


def test_a_budget_stops_the_run_before_the_round_that_would_exceed_it(fixed_dp_process):
    event = dp_accounting.PoissonSampledDpEvent(COHORT / POPULATION, dp_accounting.GaussianDpEvent(Z))
    after = [_reference(event, r, dp_accounting.pld.PLDAccountant()) for r in (3, 4)]
    budget = aggregators.PrivacyBudget(epsilon=(after[0] + after[1]) / 2, delta=DELTA)  # room for 3 rounds, not 4
    ledger = aggregators.PrivacyLedger(population_size=POPULATION, budget=budget)
    history = _run(fixed_dp_process, ledger, 10)
    assert history.rounds == [1, 2, 3]
    assert history.history["privacy/epsilon"][-1] == pytest.approx(after[0], abs=1e-9)
    assert history.history["privacy/epsilon"][-1] <= budget.epsilon
    assert ledger.stop_reason.startswith("privacy budget: round 4 would take epsilon from")
    assert f"{after[1]:.6g}" in ledger.stop_reason


def test_silos_in_every_round_and_the_adaptive_mechanisms_are_accounted_as_one_gaussian():
    """No population: every silo in every round (no amplification). `gaussian_adaptive` spends
    its `noise_multiplier` (value and count noise together); TFF's `adaptive_clip_average` spends
    the composition of its two releases, (z^-2 + (2 * 0.05 n)^-2)^-1/2."""
    cases = [
        (aggregators.DifferentiallyPrivateFactory.gaussian_adaptive(0.5, clients_per_round=COHORT * 10), 0.5),
        (aggregators.DifferentiallyPrivateFactory.adaptive_clip_average(0.5, clients_per_round=COHORT),
         (0.5**-2 + (2 * 0.05 * COHORT) ** -2) ** -0.5),
    ]
    for factory, z in cases:
        process = learning.build_unweighted_fed_avg(_model_fn, lambda: optimizers.build_sgdm(0.1), model_aggregator=factory)
        history = _run(process, aggregators.PrivacyLedger(delta=DELTA), 2)
        expected = [_reference(dp_accounting.GaussianDpEvent(z), r, dp_accounting.pld.PLDAccountant()) for r in (1, 2)]
        assert history.history["privacy/epsilon"] == pytest.approx(expected, abs=1e-9, rel=0)


def test_a_process_without_dp_spends_nothing_and_is_never_stopped():
    process = learning.build_unweighted_fed_avg(_model_fn, lambda: optimizers.build_sgdm(0.1))
    ledger = aggregators.PrivacyLedger(budget=aggregators.PrivacyBudget(0.1, DELTA))
    history = _run(process, ledger, 2)
    assert history.history["privacy/epsilon"] == [0.0, 0.0] and ledger.stop_reason is None


def test_a_resumed_run_keeps_what_the_earlier_rounds_spent(fixed_dp_process, tmp_path):
    """Two rounds, then a resume for two more: epsilon continues from round 2 (as one run of four)."""
    datasets = _datasets()
    sample = simulation.build_uniform_sampling_fn(list(range(POPULATION)), random_seed=0)
    select = lambda r: [datasets[i] for i in sample(r, COHORT)]  # noqa: E731
    manager = simulation.FileProgramStateManager(str(tmp_path / "state"))
    simulation.run_training_process(fixed_dp_process, select, 2, program_state_manager=manager, verbose=0,
                                    privacy_ledger=aggregators.PrivacyLedger(population_size=POPULATION, delta=DELTA))
    history = simulation.History()
    resumed = aggregators.PrivacyLedger(population_size=POPULATION, delta=DELTA)
    simulation.run_training_process(fixed_dp_process, select, 4, program_state_manager=manager, verbose=0,
                                    privacy_ledger=resumed, callbacks=[history])
    event = dp_accounting.PoissonSampledDpEvent(COHORT / POPULATION, dp_accounting.GaussianDpEvent(Z))
    assert history.rounds == [3, 4]
    assert history.history["privacy/epsilon"] == pytest.approx([_reference(event, r, dp_accounting.pld.PLDAccountant())
                                                                for r in (3, 4)], abs=1e-9, rel=0)
    (tmp_path / "state" / "privacy_ledger.json").unlink()
    with pytest.raises(ValueError, match="privacy cost is unknown"):
        simulation.run_training_process(fixed_dp_process, select, 6, program_state_manager=manager, verbose=0,
                                        privacy_ledger=aggregators.PrivacyLedger(population_size=POPULATION))
