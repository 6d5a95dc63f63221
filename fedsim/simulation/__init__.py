"""fedsim.simulation: federated datasets, client sampling, and the training loop with metrics and checkpoints.

Example::

    from fedsim import simulation
    train = simulation.datasets.emnist.synthetic_client_data(num_clients=100, seed=0)
    sample = simulation.build_uniform_sampling_fn(train.client_ids, random_seed=0)
    state = simulation.run_training_process(process, lambda r: [...], total_rounds=10)
"""

import importlib
from typing import Any

# Names load their module on first use (PEP 562): importing one module of the package (say the
# callbacks, which the serverless handler uses) does not load the datasets and Keras models.
_WHERE = {
    "datasets": None,
    "models": None,
    "Callback": "callbacks",
    "EarlyStopping": "callbacks",
    "History": "callbacks",
    "compose_dataset_computation_with_iterative_process": "compose",
    "compose_dataset_computation_with_learning_process": "compose",
    "CSVMetricsManager": "metrics_managers",
    "TensorBoardMetricsManager": "metrics_managers",
    "flatten_metrics": "metrics_managers",
    "FileProgramStateManager": "program_state",
    "ProgramStateError": "program_state",
    "build_uniform_sampling_fn": "sampling",
    "EMNIST_INPUT_SPEC": "synthetic",
    "emnist_like_client_arrays": "synthetic",
    "emnist_like_client_datasets": "synthetic",
    "run_training_process": "training_loop",
    "AppliedUpdate": "asynchronous",
    "AsyncTrainingResult": "asynchronous",
    "ModelVersion": "asynchronous",
    "RefusedUpdate": "asynchronous",
    "run_async_training_process": "asynchronous",
    "constant_staleness": "asynchronous",
    "polynomial_staleness": "asynchronous",
    "LatencyModel": "latency",
    "ClientWorkError": "ray_context",
    "RayExecutionContext": "ray_context",
    "WorkerClientData": "ray_context",
    "WorkerDataset": "ray_context",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:  # a submodule by its name (fedsim.simulation.metrics_managers)
        try:
            module = importlib.import_module(f"fedsim.simulation.{name}")
        except ModuleNotFoundError:
            raise AttributeError(f"module 'fedsim.simulation' has no attribute {name!r}") from None
        globals()[name] = module
        return module
    module = importlib.import_module(f"fedsim.simulation.{_WHERE[name] or name}")
    value = module if _WHERE[name] is None else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(list(globals()) + list(_WHERE))


__all__ = [
    "AppliedUpdate",
    "AsyncTrainingResult",
    "LatencyModel",
    "ModelVersion",
    "RefusedUpdate",
    "run_async_training_process",
    "constant_staleness",
    "polynomial_staleness",
    "Callback",
    "EarlyStopping",
    "History",
    "CSVMetricsManager",
    "EMNIST_INPUT_SPEC",
    "FileProgramStateManager",
    "ProgramStateError",
    "TensorBoardMetricsManager",
    "build_uniform_sampling_fn",
    "compose_dataset_computation_with_iterative_process",
    "compose_dataset_computation_with_learning_process",
    "models",
    "datasets",
    "emnist_like_client_arrays",
    "emnist_like_client_datasets",
    "flatten_metrics",
    "run_training_process",
]
