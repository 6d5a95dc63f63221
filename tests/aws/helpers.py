"""What the local-stack tests share: a small model, the preprocessing, simulation and silo agents in threads."""

import collections
import contextlib
import threading

import keras
import numpy as np
import tensorflow as tf

import fedsim
from fedsim import aws, learning
from fedsim.core import context_stack

SILOS = ["a", "b", "c"]
ELEMENT = collections.OrderedDict(x=tf.TensorSpec([5], tf.float32), y=tf.TensorSpec([], tf.int32))


def model_fn():
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    return learning.from_keras_model(
        model, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        input_spec=collections.OrderedDict(x=tf.TensorSpec([None, 5], tf.float32), y=tf.TensorSpec([None], tf.int32)),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )


@fedsim.tf_computation(fedsim.SequenceType(ELEMENT))
def batch(dataset):
    return dataset.batch(4)


def local_datasets(arrays, silos):
    return [tf.data.Dataset.from_tensor_slices(arrays[s]).batch(4) for s in silos]


def simulate(process, state, arrays, silos):
    """One round in the local simulation context, even inside an AWS context block."""
    with context_stack.execution_context(fedsim.LocalExecutionContext()):
        return process.next(state, local_datasets(arrays, silos))


def assert_close(expected, got):
    """Same structure (containers, keys, number of leaves), then the same values."""
    assert type(expected) is type(got)
    tf.nest.assert_same_structure(expected, got, check_types=False)
    expected_leaves, got_leaves = tf.nest.flatten(expected), tf.nest.flatten(got)
    assert len(expected_leaves) == len(got_leaves), (len(expected_leaves), len(got_leaves))
    for a, b in zip(expected_leaves, got_leaves):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-6)


def start_agents(stack, arrays, silos, rounds=1, agent_class=aws.SiloAgent, options_for=None, **kwargs):
    """Silo agents in threads (the fault tests); `options_for(silo)`: keyword arguments of that
    silo's agent (e.g. its identity key). Returns (agents, threads, errors)."""
    agents, threads, errors = [], [], []
    for silo in silos:
        options = dict(kwargs, **(options_for(silo) if options_for else {}))
        agent = agent_class(stack.silo_config(silo), silo, tf.data.Dataset.from_tensor_slices(arrays[silo]), **options)

        def run(agent=agent):
            try:
                agent.run(stop_after_rounds=rounds, idle_timeout=60)
            except BaseException as error:  # noqa: BLE001 - a killed silo (SiloKilled) too
                errors.append((agent.silo_id, error))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        agents.append(agent)
        threads.append(thread)
    return agents, threads, errors


class SiloKilled(BaseException):
    """Stands for the silo's process being killed: no except clause of the agent catches it."""


class CrashingSilo(aws.SiloAgent):
    """A silo that dies after taking a round's message, before uploading (it never deletes the message)."""

    def work(self, request):
        raise SiloKilled(f"silo {self.silo_id} failed mid-round (simulated)")


@contextlib.contextmanager
def held_stream(stack):
    """Holds the stack's stream records instead of delivering them (to replay them, as a retried Lambda would)."""
    held = []
    original = stack.deliver_records
    stack.deliver_records = held.extend
    try:
        yield held
    finally:
        stack.deliver_records = original
