"""Mismatched arguments and misplaced values get errors that say what and where."""

import collections

import numpy as np
import pytest
import tensorflow as tf

import fedsim

MODEL = collections.OrderedDict(w=(tf.float32, [3, 2]), b=(tf.float32, [2]))


@pytest.fixture(scope="module")
def apply_model():
    @fedsim.tf_computation(MODEL, (tf.float32, [None, 3]))
    def apply_model(model, x):
        return tf.matmul(x, model["w"]) + model["b"]

    return apply_model


@pytest.fixture(scope="module")
def average():
    @fedsim.federated_computation(fedsim.FederatedType(MODEL, fedsim.SERVER), fedsim.FederatedType(tf.float32, fedsim.CLIENTS))
    def average(model, values):
        return model, fedsim.federated_mean(values)

    return average


def good_model():
    return {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}


def test_wrong_dimension_names_the_place(apply_model):
    model = {"w": np.zeros((3, 5), np.float32), "b": np.zeros(2, np.float32)}
    with pytest.raises(fedsim.TypeSignatureMismatchError) as error:
        apply_model(model, np.zeros((1, 3), np.float32))
    message = str(error.value)
    assert isinstance(error.value, TypeError)
    assert "expected: <model=<w=float32[3,2],b=float32[2]>,x=float32[?,3]>" in message
    assert "given:    <model=<w=float32[3,5],b=float32[2]>,x=float32[1,3]>" in message
    assert "at .model.w" in message and "dimension 1: 2 vs 5" in message


def test_wrong_dtype(apply_model):
    with pytest.raises(fedsim.TypeSignatureMismatchError) as error:
        apply_model(good_model(), np.zeros((1, 3), np.float64))
    assert "at .x: expected dtype float32, given a numpy array of dtype float64" in str(error.value)


def test_missing_structure_element(apply_model):
    with pytest.raises(fedsim.TypeSignatureMismatchError) as error:
        apply_model({"w": np.zeros((3, 2), np.float32)}, np.zeros((1, 3), np.float32))
    assert "missing ['b']" in str(error.value) and "at .model" in str(error.value)


def test_wrong_rank(apply_model):
    with pytest.raises(fedsim.TypeSignatureMismatchError) as error:
        apply_model(good_model(), np.zeros(3, np.float32))
    assert "rank differs" in str(error.value) and "float32[?,3]" in str(error.value)


def test_clients_value_not_a_list(average):
    with pytest.raises(fedsim.TypeSignatureMismatchError) as error:
        average(good_model(), np.float32(1.0))
    message = str(error.value)
    assert "{float32}@CLIENTS" in message and "one member per client" in message


def test_bad_client_member_names_the_client(average):
    with pytest.raises(fedsim.TypeSignatureMismatchError) as error:
        average(good_model(), [1.0, 2.0, np.array([1.0, 2.0], np.float32)])
    assert "client 2 of the argument values of average" in str(error.value)


def test_empty_client_list(average):
    with pytest.raises(ValueError, match="empty list of clients"):
        average(good_model(), [])


def test_client_count_mismatch():
    @fedsim.federated_computation(fedsim.FederatedType(tf.float32, fedsim.CLIENTS), fedsim.FederatedType(tf.float32, fedsim.CLIENTS))
    def weighted(values, weights):
        return fedsim.federated_mean(values, weights)

    with pytest.raises(ValueError, match="different numbers of clients: values has 2, weights has 3"):
        weighted([1.0, 2.0], [1.0, 1.0, 1.0])


def test_wrong_number_of_arguments(apply_model):
    with pytest.raises(TypeError, match="takes 2 arguments"):
        apply_model(good_model())


def test_tf_computation_on_federated_value_is_refused_at_trace_time(apply_model):
    with pytest.raises(fedsim.TypeSignatureMismatchError) as error:

        @fedsim.federated_computation(fedsim.FederatedType(MODEL, fedsim.SERVER), fedsim.FederatedType((tf.float32, [None, 3]), fedsim.SERVER))
        def wrong(model, x):
            return apply_model(model, x)

    assert "federated_map" in str(error.value) and "given <w=float32[3,2],b=float32[2]>@SERVER" in str(error.value)


@pytest.mark.parametrize(
    "build, expected",
    [
        (lambda v: fedsim.federated_sum(v), "must be placed at CLIENTS, but it is float32@SERVER"),
        (lambda v: fedsim.federated_mean(v), "must be placed at CLIENTS"),
        (lambda v: fedsim.federated_broadcast(fedsim.federated_broadcast(v)), "sends a server value to the clients, but got float32@CLIENTS"),
        (lambda v: fedsim.federated_zip([v, fedsim.federated_broadcast(v)]), "at different placements"),
    ],
)
def test_placement_misuse_is_refused_at_trace_time(build, expected):
    with pytest.raises(fedsim.FederatedTypeError, match=expected.replace("[", r"\[").replace("{", r"\{")):
        fedsim.federated_computation(build, fedsim.FederatedType(tf.float32, fedsim.SERVER))


def test_non_numeric_sum_and_integer_mean_are_refused():
    with pytest.raises(fedsim.FederatedTypeError, match="needs numeric tensors"):
        fedsim.federated_computation(lambda v: fedsim.federated_sum(v), fedsim.FederatedType(tf.string, fedsim.CLIENTS))
    with pytest.raises(fedsim.FederatedTypeError, match="needs floating tensors"):
        fedsim.federated_computation(lambda v: fedsim.federated_mean(v), fedsim.FederatedType(tf.int32, fedsim.CLIENTS))


def test_map_with_a_function_of_the_wrong_type():
    @fedsim.tf_computation(tf.int32)
    def increment(x):
        return x + 1

    with pytest.raises(fedsim.TypeSignatureMismatchError) as error:
        fedsim.federated_computation(lambda v: fedsim.federated_map(increment, v), fedsim.FederatedType(tf.float32, fedsim.CLIENTS))
    assert "expected: int32" in str(error.value) and "given:    float32" in str(error.value)


def test_unplaced_map_argument():
    @fedsim.tf_computation(tf.float32)
    def identity(x):
        return x

    with pytest.raises(fedsim.FederatedTypeError, match="needs a federated argument"):
        fedsim.federated_computation(lambda v: fedsim.federated_map(identity, v), tf.float32)


def test_python_control_flow_on_traced_values_is_explained():
    with pytest.raises(TypeError, match="no truth value"):
        fedsim.federated_computation(lambda v: v if v else v, fedsim.FederatedType(tf.float32, fedsim.SERVER))


def test_python_numbers_that_do_not_fit_their_dtype_are_refused():
    @fedsim.tf_computation(tf.int32)
    def identity(x):
        return x

    assert identity(2**31 - 1) == 2**31 - 1
    with pytest.raises(fedsim.TypeSignatureMismatchError, match=r"the Python int value 1099511627776 does not fit int32"):
        identity(2**40)
    with pytest.raises(fedsim.TypeSignatureMismatchError, match="does not fit int32"):
        identity(-(2**31) - 1)

    @fedsim.tf_computation(fedsim.TensorType(tf.uint8, [2]))
    def small(x):
        return x

    with pytest.raises(fedsim.TypeSignatureMismatchError, match="does not fit uint8"):
        small([1, 256])

    @fedsim.tf_computation(tf.float32)
    def real(x):
        return x

    with pytest.raises(fedsim.TypeSignatureMismatchError, match="overflows float32"):
        real(1e300)


def test_phases_that_do_not_fit_are_refused_by_the_canonical_form():
    @fedsim.federated_computation(fedsim.FederatedType(tf.float32, fedsim.SERVER), fedsim.FederatedType(tf.float32, fedsim.CLIENTS))
    def round_fn(state, values):
        return state, fedsim.federated_sum(values)

    @fedsim.federated_computation(fedsim.FederatedType(tf.float32, fedsim.SERVER), fedsim.FederatedType(tf.int32, fedsim.CLIENTS))
    def other(state, values):
        return state, fedsim.federated_sum(values)

    form = fedsim.compile_to_canonical_form(round_fn)
    phases = dict(form.phases(), work=fedsim.compile_to_canonical_form(other).work)
    with pytest.raises(fedsim.CanonicalFormError, match=r"work's parameter do not fit"):
        fedsim.CanonicalForm.from_phases(form.type_signature, phases)
    assert form.broadcast_type == fedsim.StructType([]) and form.client_input_type == fedsim.TensorType(tf.float32)
    assert form.iterates and form.next_state((np.float32(2.0), np.float32(3.0))) == 2.0
