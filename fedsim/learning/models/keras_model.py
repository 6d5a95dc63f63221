"""`from_keras_model`: a Keras 3 model as a `VariableModel`.

The loss is tracked as an example-weighted mean (as Keras' `evaluate` reports it), together
with `num_examples` and `num_batches`, by plain variables (cheap per batch); Keras metrics report their variables unfinalized and
are finalized by a fresh copy of the metric built from its config, so sum-then-finalize across
clients equals the metric on the pooled data.

Example::

    def model_fn():
        keras_model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10)])
        return fedsim.learning.models.from_keras_model(
            keras_model,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            input_spec=collections.OrderedDict(x=tf.TensorSpec([None, 784]), y=tf.TensorSpec([None], tf.int32)),
            metrics=[keras.metrics.SparseCategoricalAccuracy()])
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Optional, Sequence

import keras
import tensorflow as tf

from fedsim.learning.models.variable_model import BatchOutput, VariableModel

__all__ = ["from_keras_model", "KerasVariableModel"]


def _split_batch(batch: Any) -> tuple:
    if isinstance(batch, dict):
        if "x" not in batch or "y" not in batch:
            raise ValueError(f"a batch given as a mapping needs keys 'x' and 'y', got {sorted(batch)}")
        return batch["x"], batch["y"]
    if isinstance(batch, (list, tuple)) and len(batch) == 2:
        return batch[0], batch[1]
    raise ValueError("a batch must be a mapping with 'x' and 'y' or a pair (x, y)")


def _instantiate(metric: Any) -> keras.metrics.Metric:
    if isinstance(metric, keras.metrics.Metric):
        return metric
    if callable(metric):
        built = metric()
        if isinstance(built, keras.metrics.Metric):
            return built
    raise TypeError(f"metrics must be Keras metric objects or constructors of them, got {metric!r}")


class _Totals:
    """fedsim's own counters (loss, num_examples, num_batches) as plain variables.

    Keras metric objects cost about 2 ms per batch in a graph; these three cost a few ops.
    Unfinalized they are sums, like Keras' own `Mean` and `Sum` variables.
    """

    def __init__(self):
        self.loss_sum = tf.Variable(0.0, trainable=False, name="loss_sum")
        self.loss_weight = tf.Variable(0.0, trainable=False, name="loss_weight")
        self.num_examples = tf.Variable(tf.constant(0, tf.int64), trainable=False, name="num_examples")
        self.num_batches = tf.Variable(tf.constant(0, tf.int64), trainable=False, name="num_batches")

    @property
    def variables(self) -> list:
        return [self.loss_sum, self.loss_weight, self.num_examples, self.num_batches]

    def update(self, loss: tf.Tensor, num_examples: tf.Tensor) -> None:
        examples = tf.cast(num_examples, tf.float32)
        self.loss_sum.assign_add(tf.cast(loss, tf.float32) * examples)
        self.loss_weight.assign_add(examples)
        self.num_examples.assign_add(tf.cast(num_examples, tf.int64))
        self.num_batches.assign_add(tf.constant(1, tf.int64))

    def report(self) -> dict:
        return collections.OrderedDict(
            loss=[tf.convert_to_tensor(self.loss_sum), tf.convert_to_tensor(self.loss_weight)],
            num_examples=[tf.convert_to_tensor(self.num_examples)],
            num_batches=[tf.convert_to_tensor(self.num_batches)],
        )

    @staticmethod
    def finalizers() -> dict:
        return collections.OrderedDict(
            loss=lambda values: tf.math.divide_no_nan(values[0], values[1]),
            num_examples=lambda values: values[0],
            num_batches=lambda values: values[0],
        )

    def reset(self) -> None:
        for variable in self.variables:
            variable.assign(tf.zeros_like(variable))


def _sum_variables(metric: keras.metrics.Metric) -> bool:
    return all(v.dtype in ("float32", "float64", "int32", "int64") for v in metric.variables)


class KerasVariableModel(VariableModel):
    """A `VariableModel` around a Keras 3 model, a loss and Keras metrics."""

    def __init__(self, keras_model: keras.Model, loss: Any, input_spec: Any, metrics: Sequence[Any], loss_weights: Optional[Sequence[float]]):
        if not isinstance(keras_model, keras.Model):
            raise TypeError(f"from_keras_model needs a keras.Model, got {type(keras_model).__name__}")
        if keras_model.compiled:
            raise ValueError(
                "from_keras_model needs an uncompiled Keras model: the loss, optimizer and metrics of a "
                "compiled model would be ignored; pass the loss and metrics to from_keras_model instead"
            )
        self._keras_model = keras_model
        self._input_spec = input_spec
        losses = list(loss) if isinstance(loss, (list, tuple)) else [loss]
        for fn in losses:
            if not callable(fn):
                raise TypeError(f"the loss must be a callable (y_true, y_pred) -> loss, got {fn!r}")
        if loss_weights is not None and len(loss_weights) != len(losses):
            raise ValueError(f"{len(loss_weights)} loss_weights for {len(losses)} losses")
        self._losses = losses
        self._loss_weights = list(loss_weights) if loss_weights is not None else [1.0] * len(losses)
        self._totals = _Totals()
        self._metrics = [_instantiate(m) for m in (metrics or [])]
        for metric in self._metrics:
            if not _sum_variables(metric):
                raise TypeError(f"metric {metric.name} has variables that cannot be summed across clients")
            if metric.name in ("loss", "num_examples", "num_batches"):
                raise ValueError(f"the metric name {metric.name!r} is reserved for fedsim's own counters")

    @property
    def trainable_variables(self) -> list:
        return list(self._keras_model.trainable_variables)

    @property
    def non_trainable_variables(self) -> list:
        return list(self._keras_model.non_trainable_variables)

    @property
    def local_variables(self) -> list:
        return self._totals.variables + [v for m in self._metrics for v in m.variables]

    @property
    def input_spec(self) -> Any:
        return self._input_spec

    @property
    def keras_model(self) -> keras.Model:
        return self._keras_model

    def predict_on_batch(self, x: Any, training: bool = True) -> Any:
        return self._keras_model(x, training=training)

    def _loss(self, y: Any, predictions: Any) -> tf.Tensor:
        if len(self._losses) == 1:
            total = self._losses[0](y, predictions)
        else:
            ys, ps = tf.nest.flatten(y), tf.nest.flatten(predictions)
            if len(ys) != len(self._losses) or len(ps) != len(self._losses):
                raise ValueError(f"{len(self._losses)} losses for {len(ys)} labels and {len(ps)} outputs")
            total = tf.add_n([w * fn(t, p) for w, fn, t, p in zip(self._loss_weights, self._losses, ys, ps)])
        if tf.convert_to_tensor(total).shape.rank not in (0, None):
            raise ValueError(
                f"the loss must reduce to a scalar, but it has shape {total.shape}; use a Keras loss with "
                f"reduction (the default) or reduce it yourself"
            )
        regularization = self._keras_model.losses
        if regularization:
            total = total + tf.add_n(regularization)
        return total

    def forward_pass(self, batch_input: Any, training: bool = True) -> BatchOutput:
        x, y = _split_batch(batch_input)
        predictions = self.predict_on_batch(x, training=training)
        loss = self._loss(y, predictions)
        num_examples = tf.shape(tf.nest.flatten(x)[0])[0]
        self._totals.update(loss, num_examples)
        for metric in self._metrics:
            metric.update_state(y, predictions)
        return BatchOutput(loss=loss, predictions=predictions, num_examples=num_examples)

    def report_local_unfinalized_metrics(self) -> dict:
        report = self._totals.report()
        for metric in self._metrics:
            report[metric.name] = [tf.convert_to_tensor(v) for v in metric.variables]
        return report

    def metric_finalizers(self) -> dict:
        finalizers = self._totals.finalizers()
        for metric in self._metrics:
            finalizers[metric.name] = _finalizer(type(metric), metric.get_config())
        return finalizers

    def reset_metrics(self) -> None:
        self._totals.reset()
        for metric in self._metrics:
            metric.reset_state()


def _finalizer(metric_class: type, config: dict) -> Callable[[list], Any]:
    def finalize(values: list) -> Any:
        metric = metric_class.from_config(config)
        for variable, value in zip(metric.variables, values):
            variable.assign(value)
        return metric.result()

    return finalize


def from_keras_model(
    keras_model: keras.Model,
    loss: Any,
    input_spec: Any,
    metrics: Optional[Sequence[Any]] = None,
    loss_weights: Optional[Sequence[float]] = None,
) -> KerasVariableModel:
    """Wraps an (uncompiled) Keras 3 model as a `VariableModel`; call it inside `model_fn`."""
    return KerasVariableModel(keras_model, loss, input_spec, metrics or [], loss_weights)
