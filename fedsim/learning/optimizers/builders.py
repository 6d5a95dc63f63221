"""The standard optimizers, with Keras 3's update rules and defaults."""

from __future__ import annotations

import tensorflow as tf

from fedsim.learning.optimizers.optimizer import LearningRate, Optimizer

__all__ = ["build_sgdm", "build_adam", "build_adagrad", "build_rmsprop", "build_yogi"]


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


class _SGDM(Optimizer):
    def __init__(self, learning_rate, momentum):
        super().__init__(learning_rate)
        _check_fraction("momentum", momentum)
        self.momentum = momentum

    def _slots(self):
        return {"momentum": 0.0} if self.momentum else {}

    def apply(self, state, variables, gradients):
        if self.momentum:
            return super().apply(state, variables, gradients)
        rate = self._rate(state["step"])
        for variable, gradient in zip(variables, gradients):
            variable.assign_sub(tf.cast(rate, variable.dtype) * tf.cast(gradient, variable.dtype))
        return {"step": state["step"] + 1}

    def _update(self, weight, gradient, slots, rate, step):
        if not self.momentum:
            return weight - rate * gradient, []
        (velocity,) = slots
        velocity = self.momentum * velocity - rate * gradient
        return weight + velocity, [velocity]


class _Adam(Optimizer):
    def __init__(self, learning_rate, beta_1, beta_2, epsilon):
        super().__init__(learning_rate)
        _check_fraction("beta_1", beta_1)
        _check_fraction("beta_2", beta_2)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon

    def _slots(self):
        return {"m": 0.0, "v": 0.0}

    def _update(self, weight, gradient, slots, rate, step):
        m, v = slots
        t = tf.cast(step, weight.dtype)
        alpha = rate * tf.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t)
        m = m + (gradient - m) * (1 - self.beta_1)
        v = v + (tf.square(gradient) - v) * (1 - self.beta_2)
        return weight - (m * alpha) / (tf.sqrt(v) + self.epsilon), [m, v]


class _Adagrad(Optimizer):
    def __init__(self, learning_rate, initial_accumulator_value, epsilon):
        super().__init__(learning_rate)
        self.initial, self.epsilon = initial_accumulator_value, epsilon

    def _slots(self):
        return {"accumulator": self.initial}

    def _update(self, weight, gradient, slots, rate, step):
        (accumulator,) = slots
        accumulator = accumulator + tf.square(gradient)
        return weight - rate * gradient / tf.sqrt(accumulator + self.epsilon), [accumulator]


class _RMSprop(Optimizer):
    def __init__(self, learning_rate, rho, epsilon):
        super().__init__(learning_rate)
        _check_fraction("rho", rho)
        self.rho, self.epsilon = rho, epsilon

    def _slots(self):
        return {"velocity": 0.0}

    def _update(self, weight, gradient, slots, rate, step):
        (velocity,) = slots
        velocity = self.rho * velocity + (1 - self.rho) * tf.square(gradient)
        return weight - rate * gradient * tf.math.rsqrt(velocity + self.epsilon), [velocity]


class _Yogi(Optimizer):
    """Yogi (Zaheer et al., 2018), as used for FedYogi (Reddi et al., 2021)."""

    def __init__(self, learning_rate, beta_1, beta_2, epsilon, initial_accumulator_value):
        super().__init__(learning_rate)
        self.beta_1, self.beta_2, self.epsilon, self.initial = beta_1, beta_2, epsilon, initial_accumulator_value

    def _slots(self):
        return {"m": 0.0, "v": self.initial}

    def _update(self, weight, gradient, slots, rate, step):
        m, v = slots
        t = tf.cast(step, weight.dtype)
        g2 = tf.square(gradient)
        m = self.beta_1 * m + (1 - self.beta_1) * gradient
        v = v - (1 - self.beta_2) * tf.sign(v - g2) * g2
        m_hat = m / (1 - self.beta_1**t)
        v_hat = v / (1 - self.beta_2**t)
        return weight - rate * m_hat / (tf.sqrt(v_hat) + self.epsilon), [m, v]


def build_sgdm(learning_rate: LearningRate = 0.01, momentum: float = 0.0) -> Optimizer:
    """SGD with optional momentum (Keras `SGD`, non-Nesterov).

    Args:
        learning_rate: a float or a Keras `LearningRateSchedule` (called with the step count).
        momentum: the momentum (0: plain SGD, no slot).

    Returns:
        A functional `Optimizer` (`initialize(specs)`, `next(state, weights, gradients)`).

    Example:
        >>> process = build_weighted_fed_avg(model_fn, lambda: fedsim.learning.optimizers.build_sgdm(0.1))
    """
    return _SGDM(learning_rate, momentum)


def build_adam(learning_rate: LearningRate = 0.001, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7) -> Optimizer:
    """Adam, as Keras 3's `Adam` (no AMSGrad).

    Args:
        learning_rate: a float or a Keras `LearningRateSchedule` (called with the step count).
        beta_1: the first moment's decay.
        beta_2: the second moment's decay.
        epsilon: added to the denominator.

    Returns:
        A functional `Optimizer` (`initialize(specs)`, `next(state, weights, gradients)`).
    """
    return _Adam(learning_rate, beta_1, beta_2, epsilon)


def build_adagrad(learning_rate: LearningRate = 0.001, initial_accumulator_value: float = 0.1, epsilon: float = 1e-7) -> Optimizer:
    """Adagrad, as Keras 3's `Adagrad`.

    Args:
        learning_rate: a float or a Keras `LearningRateSchedule` (called with the step count).
        initial_accumulator_value: the accumulator's start.
        epsilon: added to the denominator.

    Returns:
        A functional `Optimizer` (`initialize(specs)`, `next(state, weights, gradients)`).
    """
    return _Adagrad(learning_rate, initial_accumulator_value, epsilon)


def build_rmsprop(learning_rate: LearningRate = 0.001, rho: float = 0.9, epsilon: float = 1e-7) -> Optimizer:
    """RMSprop, as Keras 3's `RMSprop` (no momentum, not centered).

    Args:
        learning_rate: a float or a Keras `LearningRateSchedule` (called with the step count).
        rho: the moving average's decay.
        epsilon: added to the denominator.

    Returns:
        A functional `Optimizer` (`initialize(specs)`, `next(state, weights, gradients)`).
    """
    return _RMSprop(learning_rate, rho, epsilon)


def build_yogi(
    learning_rate: LearningRate = 0.01,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-3,
    initial_accumulator_value: float = 1e-6,
) -> Optimizer:
    """Yogi (Zaheer et al. 2018); Keras has none, so tests check it against a numpy transcription of the paper.

    Args:
        learning_rate: a float or a Keras `LearningRateSchedule` (called with the step count).
        beta_1: the first moment's decay.
        beta_2: the second moment's decay.
        epsilon: added to the denominator.
        initial_accumulator_value: the moments' start.

    Returns:
        A functional `Optimizer` (`initialize(specs)`, `next(state, weights, gradients)`).
    """
    return _Yogi(learning_rate, beta_1, beta_2, epsilon, initial_accumulator_value)
