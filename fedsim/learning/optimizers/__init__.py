"""Functional optimizers (`initialize` / `next`), matching Keras 3's update rules."""

from fedsim.learning.optimizers.builders import build_adagrad, build_adam, build_rmsprop, build_sgdm, build_yogi
from fedsim.learning.optimizers.dp_sgd import DpSgd, build_dp_sgd, dp_sgd_epsilon
from fedsim.learning.optimizers.keras_conversion import from_keras_optimizer
from fedsim.learning.optimizers.optimizer import LearningRate, Optimizer

__all__ = ["DpSgd", "LearningRate", "Optimizer", "build_adagrad", "build_dp_sgd", "dp_sgd_epsilon", "build_adam", "build_rmsprop", "build_sgdm", "build_yogi", "from_keras_optimizer"]
