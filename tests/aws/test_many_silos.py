"""Fifty silos on one local stack (agents share this process): a round equals the simulation over them."""

import collections
import time

import numpy as np
import pytest

from fedsim import aws, learning
from fedsim.learning import optimizers
from tests.aws.helpers import assert_close, batch, model_fn, simulate, start_agents

SILO_COUNT = 50


@pytest.fixture(scope="module")
def many():
    silos = [f"silo-{i:02d}" for i in range(SILO_COUNT)]
    rng = np.random.RandomState(5)
    arrays = {s: collections.OrderedDict(x=rng.randn(4, 5).astype(np.float32), y=rng.randint(0, 3, 4).astype(np.int32)) for s in silos}
    with aws.LocalStack(silos, silo_visibility_timeout=30) as stack:
        yield stack, silos, arrays


def assert_one_round_equals_the_simulation(stack, silos, arrays):
    process = learning.build_weighted_fed_avg(model_fn, lambda: optimizers.build_sgdm(0.1))
    state = process.initialize()
    _, threads, errors = start_agents(stack, arrays, silos, poll_seconds=1)
    with aws.execution_context(stack, silos=silos, preprocess=batch, round_deadline_seconds=240) as context:
        output = process.next(state, silos)
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors[:3]
    assert context.last_report.rounds[0]["aggregated"] == silos
    assert_close(simulate(process, state, arrays, silos), output)


def test_fifty_silos_one_round(many):
    stack, silos, arrays = many
    assert len(stack.config.silo_queues) == SILO_COUNT and len({stack.silo_config(s).access_key for s in silos}) == SILO_COUNT
    started = time.monotonic()
    assert_one_round_equals_the_simulation(stack, silos, arrays)
    print(f"{SILO_COUNT} silos: one round in {time.monotonic() - started:.1f}s")


def test_silos_in_nested_stacks_run_a_round():
    """The nested layout a deployment beyond 60 silos needs (here 5 silos in groups of 2), deployed on
    the local stack from its S3-staged group template: a round equals the simulation."""
    silos = [f"group-silo-{i}" for i in range(5)]
    rng = np.random.RandomState(9)
    arrays = {s: collections.OrderedDict(x=rng.randn(4, 5).astype(np.float32), y=rng.randint(0, 3, 4).astype(np.int32)) for s in silos}
    with aws.LocalStack(silos, silo_group_size=2) as stack:
        cloudformation = stack.config.client("cloudformation")
        outputs = aws.config.stack_outputs(cloudformation, stack.stack_name)
        assert sorted(aws.config.silo_slots(outputs).values()) == [
            "SiloGroup1Slot0", "SiloGroup1Slot1", "SiloGroup2Slot0", "SiloGroup2Slot1", "SiloGroup3Slot0"]
        assert_one_round_equals_the_simulation(stack, silos, arrays)
