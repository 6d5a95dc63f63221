"""`LearningProcess`: an `IterativeProcess` over a learning algorithm's state."""

from fedsim.learning.templates.learning_process import LearningAlgorithmState, LearningProcess, LearningProcessOutput

__all__ = ["LearningAlgorithmState", "LearningProcess", "LearningProcessOutput"]
