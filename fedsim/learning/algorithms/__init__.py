"""Learning algorithms as processes: FedAvg, FedProx, federated evaluation."""

from fedsim.learning.algorithms.fed_avg import (
    ClientWeighting,
    build_fed_sgd,
    build_unweighted_fed_avg,
    build_weighted_fed_avg,
    build_weighted_fed_prox,
)
from fedsim.learning.algorithms.fed_eval import build_fed_eval, build_federated_evaluation

__all__ = [
    "ClientWeighting",
    "build_fed_eval",
    "build_fed_sgd",
    "build_federated_evaluation",
    "build_unweighted_fed_avg",
    "build_weighted_fed_avg",
    "build_weighted_fed_prox",
]
