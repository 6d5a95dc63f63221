"""SecAgg+ on the local stack: with `secure_neighbours=k`, each silo masks and shares secrets with
its k neighbours only (a Harary graph the session orders), and the round still equals the
simulation. Five silos of their own stack, so a neighbourhood (k + 1 = 3) is smaller than the
round."""

import collections
import json

import numpy as np
import pytest
import tensorflow as tf

from fedsim import aws, learning
from fedsim.aws import secure_round
from fedsim.core import types as ft
from fedsim.core.secagg import crypto
from fedsim.core.secagg.messages import EncryptedShares
from fedsim.learning import optimizers
from tests.aws.helpers import assert_close, batch, model_fn, simulate, start_agents

FIVE = ["a", "b", "c", "d", "e"]
IDENTITIES = {s: crypto.identity_key() for s in FIVE}
PINNED = {s: crypto.public_bytes(key) for s, key in IDENTITIES.items()}


@pytest.fixture(scope="module")
def five_stack():
    with aws.LocalStack(FIVE, silo_visibility_timeout=3) as local_stack:
        yield local_stack
    assert not local_stack.handler_errors, local_stack.handler_errors


@pytest.fixture(scope="module")
def five_arrays():
    rng = np.random.RandomState(1)
    return {s: collections.OrderedDict(x=rng.randn(n, 5).astype(np.float32), y=rng.randint(0, 3, n).astype(np.int32))
            for s, n in zip(FIVE, (6, 9, 7, 8, 5))}


def test_secagg_plus_neighbourhoods_on_silos_give_the_simulations_round(five_stack, five_arrays):
    process = learning.build_weighted_fed_avg(model_fn, lambda: optimizers.build_sgdm(0.1),
                                              model_aggregator=learning.secure_aggregator())
    agents, threads, errors = start_agents(five_stack, five_arrays, FIVE, options_for=lambda silo: {
        "identity": IDENTITIES[silo], "pinned_identities": PINNED})
    with aws.execution_context(five_stack, silos=FIVE, preprocess=batch, round_deadline_seconds=120,
                               secure_neighbours=2) as context:
        state = process.initialize()
        output = process.next(state, FIVE)
        run_id = context.last_report.run_id
        manifest = context.store.get_json(f"runs/{run_id}/manifest.json")
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert [agent.outcomes[-1] for agent in agents] == ["reported"] * 5
    assert_close(simulate(process, state, five_arrays, FIVE), output)
    assert manifest["secure_neighbours"] == 2 and manifest["secure_threshold"] == 3  # a neighbourhood of 3, all needed

    # Each silo shared its secrets with its 2 neighbours only, and the neighbourhoods are the
    # session's Harary graph: a ring (every silo has 2 neighbours, each pair both ways).
    store = aws.store.Store(five_stack.config)
    recipients = {}
    for silo in FIVE:
        items = [item for item in store.query_partition(silo) if item["sk"].endswith(f"{run_id}#1#sa#shares")]
        assert len(items) == 1, items
        shares = EncryptedShares.from_json(items[0]["secagg"], silo)
        recipients[silo] = set(shares.ciphertexts) - {silo}
    assert all(len(peers) == 2 for peers in recipients.values()), recipients
    assert all(silo in recipients[peer] for silo, peers in recipients.items() for peer in peers), recipients


def test_a_silo_refuses_a_secagg_plus_threshold_below_a_majority_of_its_neighbourhood():
    layout = secure_round.SecureLayout.of(
        ft.StructType([(None, ft.TensorType(tf.int32, [4]))], container=tuple), [[8]])
    section = {"secure_threshold": 1, "secure_neighbours": 2}
    with pytest.raises(ValueError, match="not a majority of its neighbourhoods of 3 silos"):
        layout.step_params(section, "run", "1", FIVE)
    with pytest.raises(ValueError, match="not an even number"):
        layout.step_params({"secure_threshold": 3, "secure_neighbours": 3}, "run", "1", FIVE)
    assert layout.step_params({"secure_threshold": 2, "secure_neighbours": 2}, "run", "1", FIVE).neighbours == 2
    assert secure_round.default_threshold(quorum=5, silos=5, neighbours=2) == 3
    assert secure_round.default_threshold(quorum=1, silos=50, neighbours=8) == 5  # never below a majority
    assert json.dumps(secure_round.default_threshold(3, 3)) == "3"
