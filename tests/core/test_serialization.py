import textwrap

import numpy as np
import pytest
import tensorflow as tf

import fedsim

CLIENT_FLOATS = fedsim.FederatedType(tf.float32, fedsim.CLIENTS)


def _make():
    @fedsim.tf_computation(tf.float32, tf.float32)
    def scale(x, factor):
        return x * factor

    @fedsim.federated_computation(fedsim.FederatedType(tf.float32, fedsim.SERVER), CLIENT_FLOATS)
    def scaled_mean(factor, values):
        scaled = fedsim.federated_map(scale, (values, fedsim.federated_broadcast(factor)))
        return {"mean": fedsim.federated_mean(scaled), "sum": fedsim.federated_sum(values)}

    return scaled_mean


@pytest.fixture(scope="module")
def scaled_mean():
    return _make()


def test_serialization_is_deterministic(scaled_mean):
    first = fedsim.serialize_computation(scaled_mean)
    assert fedsim.serialize_computation(scaled_mean) == first
    assert fedsim.serialize_computation(_make()) == first  # traced again, same bytes
    assert fedsim.serialize_computation(fedsim.deserialize_computation(first)) == first


def test_deserialized_federated_computation_runs(scaled_mean):
    restored = fedsim.deserialize_computation(fedsim.serialize_computation(scaled_mean))
    assert restored.type_signature == scaled_mean.type_signature
    assert str(restored.type_signature) == "(<factor=float32@SERVER,values={float32}@CLIENTS> -> <mean=float32@SERVER,sum=float32@SERVER>)"
    result = restored(2.0, [1.0, 2.0, 6.0])
    assert result == {"mean": 6.0, "sum": 9.0}


def test_federated_computation_runs_in_a_fresh_process(scaled_mean, tmp_path, python_subprocess):
    (tmp_path / "comp.bin").write_bytes(fedsim.serialize_computation(scaled_mean))
    completed = python_subprocess(textwrap.dedent("""
        import fedsim
        comp = fedsim.deserialize_computation(open("comp.bin", "rb").read())
        print(comp.type_signature)
        print(comp(3.0, [1.0, 2.0]))
    """), cwd=str(tmp_path))
    lines = completed.stdout.strip().splitlines()
    assert lines[0] == str(scaled_mean.type_signature)
    assert lines[1] == str({"mean": np.float32(4.5), "sum": np.float32(3.0)})


def test_embedded_computations_are_stored_once():
    @fedsim.tf_computation(tf.float32)
    def big(x):
        return x + tf.constant(np.arange(100_000, dtype=np.float32))[0]

    @fedsim.federated_computation(CLIENT_FLOATS)
    def twice(values):
        once = fedsim.federated_map(big, values)
        return fedsim.federated_sum(fedsim.federated_map(big, once))

    single = len(fedsim.serialize_computation(big))
    assert len(fedsim.serialize_computation(twice)) < single + 20_000
    assert twice([1.0, 2.0]) == 3.0


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda b: b"NOTFEDSIM" + b, "bad magic"),
        (lambda b: b[: len(b) // 2], "truncated"),
        (lambda b: b[:-10] + bytes(10), "corrupt"),
        (lambda b: b + b"extra", "unexpected bytes"),
    ],
)
def test_corrupt_bytes_are_refused(scaled_mean, corrupt, message):
    data = fedsim.serialize_computation(scaled_mean)
    with pytest.raises(fedsim.SerializationError, match=message):
        fedsim.deserialize_computation(corrupt(data))
