"""The federated core: types and placements, computations, intrinsics, contexts, serialization.

Modules, one job each: `placements`, `types`, `containers` (Python classes by registered name),
`structure` (values against types, in the type's order), `computation` / `tensorflow_computation`
/ `federated_tracing` / `wrappers` (computations and their decorators), `building_blocks` (the
IR), `intrinsic_defs` (the intrinsic registry) and `intrinsics` (their tracing API),
`aggregations` (each aggregation defined once), `evaluator` (the one IR interpreter),
`values` + `local_context` (concrete values, the default context), `compiler` +
`canonical_form` + `phase_runner` (phases for silos), `serialization`, `op_allowlist`, `review`.
"""

from fedsim.core import context_stack
from fedsim.core.computation import Computation
from fedsim.core.containers import register_container
from fedsim.core.context_stack import execution_context, get_context, set_default_context
from fedsim.core.federated_tracing import FederatedComputation, Value
from fedsim.core.intrinsics import (
    FederatedTypeError,
    federated_aggregate,
    federated_broadcast,
    federated_eval,
    federated_map,
    federated_mean,
    federated_max,
    federated_min,
    federated_secure_sum,
    federated_secure_sum_bitwidth,
    federated_select,
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
from fedsim.core.tensorflow_computation import TensorFlowComputation
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
    type_at_clients,
    type_at_server,
)
from fedsim.core.wrappers import federated_computation, tf_computation
from fedsim.core.canonical_form import CanonicalForm, CanonicalFormError
from fedsim.core.compiler import compile_to_canonical_form
from fedsim.core.phase_runner import run_round as run_canonical_form

from fedsim.core import backends  # noqa: E402, F401 - TFF's context setters, over the local context

context_stack.install_default_context(LocalExecutionContext())

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
    "federated_max",
    "federated_min",
    "federated_secure_sum",
    "federated_secure_sum_bitwidth",
    "federated_select",
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
    "type_at_clients",
    "type_at_server",
]
