"""fedsim.learning: models, optimizers and algorithms with `tff.learning`'s names."""

from fedsim.learning import algorithms, metrics, model_update_aggregator, models, optimizers, templates
from fedsim.learning.algorithms import (
    ClientWeighting,
    build_fed_eval,
    build_fed_sgd,
    build_federated_evaluation,
    build_unweighted_fed_avg,
    build_weighted_fed_avg,
    build_weighted_fed_prox,
)
from fedsim.learning.model_update_aggregator import (
    compression_aggregator, ddp_secure_aggregator, dp_aggregator, robust_aggregator, secure_aggregator)
from fedsim.learning.models import BatchOutput, ModelWeights, VariableModel, from_keras_model
from fedsim.learning.templates import LearningAlgorithmState, LearningProcess, LearningProcessOutput

Model = VariableModel  # TFF's earlier name, still in its tutorials' type hints

__all__ = [
    "BatchOutput",
    "ClientWeighting",
    "LearningAlgorithmState",
    "LearningProcess",
    "LearningProcessOutput",
    "ModelWeights",
    "Model",
    "VariableModel",
    "algorithms",
    "metrics",
    "build_fed_eval",
    "build_fed_sgd",
    "build_federated_evaluation",
    "build_unweighted_fed_avg",
    "build_weighted_fed_avg",
    "build_weighted_fed_prox",
    "compression_aggregator",
    "ddp_secure_aggregator",
    "dp_aggregator",
    "model_update_aggregator",
    "robust_aggregator",
    "secure_aggregator",
    "from_keras_model",
    "models",
    "optimizers",
    "templates",
]
