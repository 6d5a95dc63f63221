"""Distributed DP: discrete Gaussian shares on the clients, the sum through the secure-sum intrinsic.

References: the discrete Gaussian's probability mass function evaluated in numpy; the plain sum
of the clipped values in numpy; dp-accounting's own RDP accountant for the Gaussian mechanism
(which the distributed discrete Gaussian's bound reduces to when the noise is wide), and
Proposition 14 of Kairouz, Liu and Steinke (2021) written out here from the paper.
"""

import collections
import math

import dp_accounting
import keras
import numpy as np
import pytest
import tensorflow as tf

import fedsim
from fedsim import aggregators, learning, simulation
from fedsim.aggregators.distributed_dp import DistributedDpSumFactory, ddgauss_rdp, sample_discrete_gaussian
from fedsim.core.secagg.runtime import SecureSumProtocol
from fedsim.learning import optimizers

VALUE = fedsim.to_type(({"a": fedsim.TensorType(tf.float32, [3, 4])}, fedsim.TensorType(tf.float32, [5])))


def _flat(value):
    return np.concatenate([value[0]["a"].ravel(), value[1].ravel()]).astype(np.float64)


def _values(n, spread, seed=0):
    rng = np.random.RandomState(seed)
    return [({"a": (rng.randn(3, 4) * spread).astype(np.float32)}, (rng.randn(5) * spread).astype(np.float32)) for _ in range(n)]


@pytest.mark.parametrize("sigma", [0.6, 1.7, 6.0])
def test_the_sampler_draws_the_discrete_gaussian_pmf(sigma):
    draws = sample_discrete_gaussian([200_000], sigma).numpy()
    support = np.arange(-int(12 * sigma) - 5, int(12 * sigma) + 6)
    pmf = np.exp(-support.astype(np.float64) ** 2 / (2 * sigma**2))
    pmf /= pmf.sum()
    hits, expected = np.array([(draws == k).sum() for k in support]), pmf * draws.size
    # 5 sigma per bin, plus 3 draws: a tail bin expecting 0.02 draws may see one (it did, in CI)
    assert np.all(np.abs(hits - expected) <= 5 * np.sqrt(expected * (1 - pmf)) + 3)
    variance, fourth = (pmf * support**2).sum(), (pmf * support**4).sum()
    assert abs(draws.var() - variance) < 5 * math.sqrt((fourth - variance**2) / draws.size)


def test_without_noise_the_result_is_the_sum_of_the_clipped_values():
    factory = DistributedDpSumFactory(noise_multiplier=0.0, expected_clients_per_round=5, l2_clip=1.5, bits=20)
    process = factory.create(VALUE)
    values = _values(5, 0.3) + [({"a": np.full((3, 4), 4.0, np.float32)}, np.full(5, -4.0, np.float32))]  # clipped to 1.5
    output = process.next(process.initialize(), values)
    clipped = [_flat(v) * min(1.0, 1.5 / np.linalg.norm(_flat(v))) for v in values]
    expected = np.sum(clipped, axis=0)
    scale = factory.parameters(32)["scale"]
    assert np.max(np.abs(_flat(output.result) - expected)) < 6 * math.sqrt(len(values)) / scale  # stochastic rounding only
    assert int(output.measurements["ddp_range_clipped_count"]) == 0


def test_the_sums_noise_has_stddev_noise_multiplier_times_clip_and_the_rotation_changes_each_round():
    clients, z, clip = 10, 1.0, 0.5
    factory = DistributedDpSumFactory(noise_multiplier=z, expected_clients_per_round=clients, l2_clip=clip, bits=24)
    value_type = fedsim.TensorType(tf.float32, [256])
    process = factory.create(value_type)
    state, results = process.initialize(), []
    for _ in range(4):
        output = process.next(state, [np.zeros(256, np.float32)] * clients)
        state = output.state
        results.append(np.asarray(output.result, np.float64))
    noise = np.concatenate(results)
    assert abs(noise.std() / (z * clip) - 1) < 0.1  # 1,024 draws: the stddev's standard error is 2.2%
    assert abs(noise.mean()) < 4 * z * clip / math.sqrt(noise.size)
    assert list(state["round_seed"]) != list(process.initialize()["round_seed"])


def test_the_rdp_bound_is_proposition_14_and_reduces_to_the_gaussian_when_the_noise_is_wide():
    orders = np.array([1.5, 2, 4, 16, 64])
    sigma, n, l2, l1, d = 0.9, 7, 30.0, 400.0, 64
    tau = 10 * sum(math.exp(-2 * math.pi**2 * sigma**2 * k / (k + 1)) for k in range(1, n))
    eps, scale1 = l2 / (math.sqrt(n) * sigma), l1 / (math.sqrt(n) * sigma)
    paper = [min(a / 2 * eps**2 + tau * d, a / 2 * (eps**2 + 2 * scale1 * tau + tau**2 * d), a / 2 * (eps + math.sqrt(d) * tau) ** 2)
             for a in orders]
    np.testing.assert_allclose(ddgauss_rdp(orders, sigma, n, l2, l1, d), paper, rtol=1e-12)
    np.testing.assert_allclose(ddgauss_rdp(orders, 50.0, n, l2, l1, d), orders * (l2 / (math.sqrt(n) * 50.0)) ** 2 / 2, rtol=1e-12)


def test_the_ledger_accounts_distributed_rounds_as_dp_accountings_gaussian_when_tau_vanishes():
    mechanism = {"sigma": 60.0, "l2_sensitivity": 200.0, "l1_sensitivity": 5000.0, "dim": 1024.0}  # tau = 0 in float64
    ledger = aggregators.PrivacyLedger(delta=1e-5)
    for r in range(1, 6):
        spent = ledger.record(r, {"mean_value": {"ddp_discrete_gaussian": mechanism}}, cohort_size=10)
    reference = dp_accounting.rdp.RdpAccountant()
    reference.compose(dp_accounting.GaussianDpEvent(math.sqrt(10) * 60.0 / 200.0), 5)
    assert spent["epsilon"] == pytest.approx(reference.get_epsilon(1e-5), abs=1e-9)
    fewer = aggregators.PrivacyLedger(delta=1e-5)
    for r in range(1, 6):
        flattened = {f"aggregator/ddp_discrete_gaussian/{name}": v for name, v in mechanism.items()}  # as the stack's metrics
        fewer.record(r, flattened, cohort_size=5)  # fewer noise shares: more epsilon
    assert fewer.epsilon() > spent["epsilon"]


SPEC = collections.OrderedDict(x=tf.TensorSpec([None, 3], tf.float32), y=tf.TensorSpec([None], tf.int32))


def _model_fn():
    return learning.from_keras_model(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), input_spec=SPEC,
                                     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def _datasets(n):
    rng = np.random.RandomState(0)
    return [tf.data.Dataset.from_tensor_slices(collections.OrderedDict(
        x=rng.randn(6, 3).astype(np.float32), y=rng.randint(0, 2, 6).astype(np.int32))).batch(3) for _ in range(n)]


def test_fed_avg_with_distributed_dp_runs_the_secure_aggregation_protocol_and_stops_at_its_budget():
    clients = 4
    aggregator = learning.ddp_secure_aggregator(1.0, clients, bits=20, zeroing=False, l2_clip=0.5)  # TFF's name for the composition
    process = learning.build_unweighted_fed_avg(_model_fn, lambda: optimizers.build_sgdm(0.1), model_aggregator=aggregator)
    mechanism = aggregators.accounting.declared_distributed_mechanisms(process.initialize())[0]
    per_round = [ddgauss_rdp(list(dp_accounting.rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS), mechanism[0], clients,
                             *mechanism[1:3], int(mechanism[3]))]
    orders = list(dp_accounting.rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS)
    eps = [dp_accounting.rdp.rdp_privacy_accountant.compute_epsilon(orders, per_round[0] * r, 1e-5)[0] for r in (1, 2, 3)]
    budget = (eps[1] + eps[2]) / 2  # two rounds fit, the third would not
    ledger = aggregators.PrivacyLedger(budget=aggregators.PrivacyBudget(budget, 1e-5))
    protocol = SecureSumProtocol()
    history = simulation.History()
    datasets = _datasets(clients)
    with fedsim.execution_context(fedsim.LocalExecutionContext(secure_aggregation=protocol)):
        simulation.run_training_process(process, lambda r: datasets, 5, callbacks=[history], privacy_ledger=ledger, verbose=0)
    assert len(history.history["privacy/epsilon"]) == 2
    np.testing.assert_allclose(history.history["privacy/epsilon"], eps[:2], rtol=1e-9)
    assert ledger.stop_reason.startswith("privacy budget: round 3")
    assert len(protocol.outcomes) >= 2 and all(len(o.included) == clients for o in protocol.outcomes)
