import numpy as np
import pytest
import tensorflow as tf

import fedsim
from fedsim import templates

SERVER_FLOAT = fedsim.FederatedType(tf.float32, fedsim.SERVER)
CLIENT_FLOATS = fedsim.FederatedType(tf.float32, fedsim.CLIENTS)


@pytest.fixture(scope="module")
def counter_process():
    @fedsim.federated_computation
    def initialize():
        return fedsim.federated_value(np.float32(0.0), fedsim.SERVER)

    @fedsim.tf_computation(tf.float32, tf.float32)
    def add(a, b):
        return a + b

    @fedsim.federated_computation(SERVER_FLOAT, CLIENT_FLOATS)
    def next_fn(state, values):
        total = fedsim.federated_sum(values)
        return fedsim.federated_map(add, (state, total)), total

    return templates.IterativeProcess(initialize, next_fn)


def test_iterative_process_runs_rounds(counter_process):
    state = counter_process.initialize()
    for round_values in ([1.0, 2.0], [3.0], [4.0, 5.0, 6.0]):
        state, total = counter_process.next(state, round_values)
    assert state == 21.0 and total == 15.0
    assert str(counter_process.state_type) == "float32@SERVER"


def test_state_type_mismatch_is_refused(counter_process):
    @fedsim.federated_computation
    def initialize_int():
        return fedsim.federated_value(np.int32(0), fedsim.SERVER)

    with pytest.raises(templates.ProcessTypeError) as error:
        templates.IterativeProcess(initialize_int, counter_process.next)
    assert "initialize_fn returns: int32@SERVER" in str(error.value)
    assert "next_fn takes state:   float32@SERVER" in str(error.value)


def test_initialize_with_a_parameter_is_refused(counter_process):
    with pytest.raises(templates.ProcessTypeError, match="must take no parameter"):
        templates.IterativeProcess(counter_process.next, counter_process.next)


def test_measured_process():
    @fedsim.federated_computation
    def initialize():
        return fedsim.federated_value(np.float32(1.0), fedsim.SERVER)

    @fedsim.tf_computation(tf.float32)
    def halve(x):
        return x / 2.0

    @fedsim.federated_computation(SERVER_FLOAT, CLIENT_FLOATS)
    def next_fn(scale, values):
        mean = fedsim.federated_mean(values)
        return templates.MeasuredProcessOutput(
            state=fedsim.federated_map(halve, scale), result=mean, measurements=fedsim.federated_sum(values)
        )

    process = templates.MeasuredProcess(initialize, next_fn)
    output = process.next(process.initialize(), [2.0, 4.0])
    assert isinstance(output, templates.MeasuredProcessOutput)
    assert (output.state, output.result, output.measurements) == (0.5, 3.0, 6.0)

    @fedsim.federated_computation(SERVER_FLOAT, CLIENT_FLOATS)
    def not_measured(scale, values):
        return scale

    with pytest.raises(templates.ProcessTypeError, match="MeasuredProcessOutput"):
        templates.MeasuredProcess(initialize, not_measured)
