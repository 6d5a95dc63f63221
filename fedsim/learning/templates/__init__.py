"""Learning process templates: `LearningProcess`, its parts, and `compose_learning_process` (TFF's names)."""

from fedsim.learning.templates.composers import ClientResult, compose_learning_process
from fedsim.learning.templates.learning_process import LearningAlgorithmState, LearningProcess, LearningProcessOutput
from fedsim.learning.templates.processes import AggregationProcess, ClientWorkProcess, DistributorProcess, FinalizerProcess
from fedsim.learning.templates.builders import (
    build_apply_optimizer_finalizer, build_broadcast_process, build_model_delta_client_work,
)

__all__ = [
    "AggregationProcess", "ClientResult", "ClientWorkProcess", "DistributorProcess", "FinalizerProcess",
    "LearningAlgorithmState", "LearningProcess", "LearningProcessOutput", "build_apply_optimizer_finalizer",
    "build_broadcast_process", "build_model_delta_client_work", "compose_learning_process",
]
