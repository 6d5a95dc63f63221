"""fedsim.simulation: synthetic federated data and training-loop helpers (ClientData comes with its issue)."""

from fedsim.simulation.progress import ProgressBar
from fedsim.simulation.synthetic import EMNIST_INPUT_SPEC, emnist_like_client_arrays, emnist_like_client_datasets

__all__ = ["EMNIST_INPUT_SPEC", "ProgressBar", "emnist_like_client_arrays", "emnist_like_client_datasets"]
