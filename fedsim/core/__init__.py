"""The federated core: types and placements, computations, intrinsics, contexts, serialization."""

from fedsim.core.computation import Computation
from fedsim.core.containers import register_container
from fedsim.core.context_stack import execution_context, get_context, set_default_context
from fedsim.core.federated_tracing import FederatedComputation, Value, federated_computation
from fedsim.core.intrinsics import (
    FederatedTypeError,
    federated_aggregate,
    federated_broadcast,
    federated_eval,
    federated_map,
    federated_mean,
    federated_secure_sum_bitwidth,
    federated_sum,
    federated_value,
    federated_zip,
    sequence_map,
    sequence_reduce,
    sequence_sum,
)
from fedsim.core.local_context import LocalExecutionContext
from fedsim.core.placements import CLIENTS, SERVER, Placement
from fedsim.core.serialization import SerializationError, computation_hash, deserialize_computation, serialize_computation
from fedsim.core.structure import TypeSignatureMismatchError
from fedsim.core.tensorflow_computation import TensorFlowComputation, tf_computation
from fedsim.core.types import (
    FederatedType,
    FunctionType,
    SequenceType,
    StructType,
    TensorType,
    Type,
    infer_type,
    is_assignable_from,
    to_type,
)

from fedsim.core.canonical_form import CanonicalForm, CanonicalFormError, compile_to_canonical_form, run_canonical_form

__all__ = [
    "CLIENTS",
    "SERVER",
    "CanonicalForm",
    "CanonicalFormError",
    "compile_to_canonical_form",
    "run_canonical_form",
    "Computation",
    "FederatedComputation",
    "FederatedType",
    "FederatedTypeError",
    "FunctionType",
    "LocalExecutionContext",
    "Placement",
    "SequenceType",
    "SerializationError",
    "StructType",
    "TensorFlowComputation",
    "TensorType",
    "Type",
    "TypeSignatureMismatchError",
    "Value",
    "computation_hash",
    "deserialize_computation",
    "execution_context",
    "federated_aggregate",
    "federated_broadcast",
    "federated_computation",
    "federated_eval",
    "federated_map",
    "federated_mean",
    "federated_secure_sum_bitwidth",
    "federated_sum",
    "federated_value",
    "federated_zip",
    "get_context",
    "infer_type",
    "is_assignable_from",
    "sequence_map",
    "sequence_reduce",
    "sequence_sum",
    "serialize_computation",
    "register_container",
    "set_default_context",
    "tf_computation",
    "to_type",
]
