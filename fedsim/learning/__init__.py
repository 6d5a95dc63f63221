"""fedsim.learning: models, optimizers and algorithms with `tff.learning`'s names."""

from fedsim.learning import algorithms, metrics, models, optimizers, templates
from fedsim.learning.algorithms import (
    ClientWeighting,
    build_fed_eval,
    build_fed_sgd,
    build_federated_evaluation,
    build_unweighted_fed_avg,
    build_weighted_fed_avg,
    build_weighted_fed_prox,
)
from fedsim.learning.models import BatchOutput, ModelWeights, VariableModel, from_keras_model
from fedsim.learning.templates import LearningAlgorithmState, LearningProcess, LearningProcessOutput

__all__ = [
    "BatchOutput",
    "ClientWeighting",
    "LearningAlgorithmState",
    "LearningProcess",
    "LearningProcessOutput",
    "ModelWeights",
    "VariableModel",
    "algorithms",
    "metrics",
    "build_fed_eval",
    "build_fed_sgd",
    "build_federated_evaluation",
    "build_unweighted_fed_avg",
    "build_weighted_fed_avg",
    "build_weighted_fed_prox",
    "from_keras_model",
    "models",
    "optimizers",
    "templates",
]
