"""Learning process templates: `LearningProcess` and `compose_learning_process`."""

from fedsim.learning.templates.composers import ClientResult, compose_learning_process
from fedsim.learning.templates.learning_process import LearningAlgorithmState, LearningProcess, LearningProcessOutput

__all__ = ["ClientResult", "LearningAlgorithmState", "LearningProcess", "LearningProcessOutput", "compose_learning_process"]
