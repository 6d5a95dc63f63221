"""fedsim.simulation: federated datasets, client sampling, and the training loop with metrics and checkpoints.

Example::

    from fedsim import simulation
    train = simulation.datasets.emnist.synthetic_client_data(num_clients=100, seed=0)
    sample = simulation.build_uniform_sampling_fn(train.client_ids, random_seed=0)
    state = simulation.run_training_process(process, lambda r: [...], total_rounds=10)
"""

from fedsim.simulation import datasets, models
from fedsim.simulation.callbacks import Callback, EarlyStopping, History
from fedsim.simulation.compose import (
    compose_dataset_computation_with_iterative_process,
    compose_dataset_computation_with_learning_process,
)
from fedsim.simulation.metrics_managers import CSVMetricsManager, TensorBoardMetricsManager, flatten_metrics
from fedsim.simulation.program_state import FileProgramStateManager, ProgramStateError
from fedsim.simulation.sampling import build_uniform_sampling_fn
from fedsim.simulation.synthetic import EMNIST_INPUT_SPEC, emnist_like_client_arrays, emnist_like_client_datasets
from fedsim.simulation.training_loop import run_training_process

__all__ = [
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
