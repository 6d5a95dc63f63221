"""Fixtures of the local-stack tests: three silos' data, a FedAvg process, the stack (one per module)."""

import collections

import numpy as np
import pytest

from fedsim import aws, learning
from fedsim.learning import optimizers
from tests.aws.helpers import SILOS, model_fn


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.RandomState(0)
    return {s: collections.OrderedDict(x=rng.randn(n, 5).astype(np.float32), y=rng.randint(0, 3, n).astype(np.int32))
            for s, n in zip(SILOS, (6, 10, 8))}


@pytest.fixture(scope="module")
def process():
    return learning.build_weighted_fed_avg(
        model_fn, lambda: optimizers.build_sgdm(0.1), server_optimizer_fn=lambda: optimizers.build_sgdm(1.0, momentum=0.5)
    )


@pytest.fixture(scope="module")
def stack():
    with aws.LocalStack(SILOS, silo_visibility_timeout=3) as local_stack:
        yield local_stack
    assert local_stack._server.poll() is not None  # stopping stops the moto server


@pytest.fixture
def fresh(stack):
    """Empty queues and no handler errors before each test; a handler error during it fails it."""
    sqs = stack.config.client("sqs")
    for url in stack.config.silo_queues.values():  # drain (PurgeQueue is limited to once a minute)
        empty = 0
        while empty < 2:
            messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages", [])
            empty = empty + 1 if not messages else 0
            for message in messages:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    stack.handler_errors.clear()
    stack.handler_retries.clear()
    yield stack
    # A batch that failed every delivery is an error no test expects: the test fails on it.
    assert not stack.handler_errors, f"the aggregation handler failed: {stack.handler_errors!r}"
