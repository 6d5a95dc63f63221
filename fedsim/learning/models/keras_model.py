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

import collections.abc

from typing import Any, Callable, Optional, Sequence

import keras
import tensorflow as tf

from fedsim.learning.models.counters import ExampleCounters
from fedsim.learning.models.model_weights import model_variables
from fedsim.learning.models.variable_model import BatchOutput, VariableModel

__all__ = ["from_keras_model", "KerasVariableModel", "input_spec_of", "split_batch"]


def split_batch(batch: Any) -> tuple:
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


def input_spec_of(input_spec_or_sample_batch: Any) -> Any:
    """The `tf.TensorSpec` structure of a batch, from specs or from a sample batch of values.

    TFF's learning-API overview passes a sample batch (`from_keras_model(model, sample_batch,
    loss=...)`); its specs keep the values' dtypes and leave the batch dimension unknown.
    """
    def spec(leaf: Any) -> Any:
        if isinstance(leaf, (tf.TensorSpec, tf.SparseTensorSpec, tf.RaggedTensorSpec)):
            return leaf
        tensor = tf.convert_to_tensor(leaf)
        if tensor.shape.rank == 0:
            raise ValueError(f"a sample batch must have a batch dimension; found a scalar {leaf!r}")
        return tf.TensorSpec([None] + tensor.shape.as_list()[1:], tensor.dtype)

    return tf.nest.map_structure(spec, input_spec_or_sample_batch)


def _reseed_random_layers(keras_model: keras.Model) -> None:
    """Gives the model's random layers (Dropout, ...) a fresh seed state.

    Keras 3 keeps a random layer's RNG state in a `seed_generator_state` variable whose initial
    value is fixed when the layer is built; since every call of a computation starts from fresh
    variables, each client would draw the same dropout masks in every round. A stateful draw
    here gives each client's call its own masks (not reproducible run to run, as in TFF).
    """
    weights = {id(v) for v in keras_model.weights}
    for variable in keras_model.non_trainable_variables:
        if id(variable) not in weights and variable.path.endswith("seed_generator_state"):
            draw = tf.random.uniform(variable.shape, maxval=2**30, dtype=tf.int32)
            variable.assign(tf.cast(draw, variable.dtype))


def _build_from_spec(keras_model: keras.Model, input_spec: Any) -> None:
    """Builds an unbuilt model by calling it once on zeros shaped like the spec's features
    (batch of one), as Keras does on a model's first call; the variables are what it creates."""
    features = input_spec[0] if isinstance(input_spec, (tuple, list)) else (
        input_spec.get("x") if isinstance(input_spec, collections.abc.Mapping) else input_spec)

    def zeros(spec):
        return tf.zeros([1 if d is None else d for d in spec.shape], spec.dtype)

    keras_model(tf.nest.map_structure(zeros, features), training=False)


def _sum_variables(metric: keras.metrics.Metric) -> bool:
    return all(v.dtype in ("float32", "float64", "int32", "int64") for v in metric.variables)


class KerasVariableModel(VariableModel):
    """A `VariableModel` around a Keras 3 model, a loss and Keras metrics.

    Made by `from_keras_model`, which takes TFF's spellings; construct it directly only with
    checked arguments.

    Args:
        keras_model: an uncompiled `keras.Model`.
        loss: a Keras loss, or a list of them (one per output).
        input_spec: the specs of a batch, `{"x", "y"}` or `(x, y)`.
        metrics: Keras metrics whose variables can be summed across clients.
        loss_weights: one weight per loss, or None.

    Raises:
        TypeError: if the model, loss or a metric is unsuitable.
        ValueError: if the model is compiled or the numbers of losses, weights and outputs differ.
    """

    def __init__(self, keras_model: keras.Model, loss: Any, input_spec: Any, metrics: Sequence[Any], loss_weights: Optional[Sequence[float]]):
        if not isinstance(keras_model, keras.Model):
            raise TypeError(f"from_keras_model needs a keras.Model, got {type(keras_model).__name__}")
        if keras_model.compiled:
            raise ValueError(
                "from_keras_model needs an uncompiled Keras model: the loss, optimizer and metrics of a "
                "compiled model would be ignored; pass the loss and metrics to from_keras_model instead"
            )
        self._keras_model = keras_model
        self._input_spec = input_spec_of(input_spec)
        if not keras_model.built:  # a model without an Input layer: built from the input spec, as Keras would on first call
            _build_from_spec(keras_model, self._input_spec)
        if not tf.executing_eagerly():  # inside a computation being traced
            _reseed_random_layers(keras_model)
        losses = list(loss) if isinstance(loss, (list, tuple)) else [loss]
        for fn in losses:
            if not callable(fn):
                raise TypeError(f"the loss must be a callable (y_true, y_pred) -> loss, got {fn!r}")
        if loss_weights is not None and len(loss_weights) != len(losses):
            raise ValueError(f"{len(loss_weights)} loss_weights for {len(losses)} losses")
        self._losses = losses
        self._loss_weights = list(loss_weights) if loss_weights is not None else [1.0] * len(losses)
        self._totals = ExampleCounters()
        self._metrics = [_instantiate(m) for m in (metrics or [])]
        for metric in self._metrics:
            if not _sum_variables(metric):
                raise TypeError(f"metric {metric.name} has variables that cannot be summed across clients")

    @property
    def trainable_variables(self) -> list:
        return model_variables(self._keras_model)[0]

    @property
    def non_trainable_variables(self) -> list:
        """Non-trainable *weights* (batch-norm statistics, ...); RNG state is not a weight."""
        return model_variables(self._keras_model)[1]

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

    def batch_loss(self, batch_input: Any, training: bool = True) -> tf.Tensor:
        """The batch's loss, without updating the metrics (DP-SGD takes it one example at a time).

        Args:
            batch_input: a batch, as `forward_pass` takes it.
            training: passed to the Keras model.

        Returns:
            The scalar loss.
        """
        x, y = split_batch(batch_input)
        return self._loss(y, self.predict_on_batch(x, training=training))

    def forward_pass(self, batch_input: Any, training: bool = True) -> BatchOutput:
        x, y = split_batch(batch_input)
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
    *positional: Any,
    loss: Any = None,
    input_spec: Any = None,
    loss_weights: Optional[Sequence[float]] = None,
    metrics: Optional[Sequence[Any]] = None,
    sample_batch: Any = None,
) -> KerasVariableModel:
    """Wraps an (uncompiled) Keras 3 model as a `VariableModel`; call it inside `model_fn`.

    TFF's two spellings both work: `from_keras_model(keras_model, loss, input_spec,
    loss_weights, metrics)` (positionally or by keyword), and the learning-API overview's
    `from_keras_model(keras_model, sample_batch, loss=...)`, where a batch of values stands for
    `input_spec` (its specs keep the dtypes and leave the batch dimension unknown).

    Args:
        keras_model: a new, uncompiled `keras.Model` (built inside `model_fn`).
        *positional: TFF's positional arguments, in order `loss, input_spec, loss_weights, metrics`,
            or a sample batch as the second argument.
        loss: a Keras loss (or a list of them, one per output).
        input_spec: the `tf.TensorSpec` structure of one batch: `{"x": ..., "y": ...}` or `(x, y)`.
        loss_weights: one weight per loss.
        metrics: Keras metric objects (or their constructors); their variables must be summable.
        sample_batch: a batch of values, instead of `input_spec`.

    Returns:
        A `VariableModel` over the Keras model's variables.

    Raises:
        TypeError: if the model is not a Keras model, the loss or input spec is missing, or a
            metric cannot be summed across clients.
        ValueError: if the model is compiled or the numbers of losses, weights and outputs differ.

    Example::

        def model_fn():
            keras_model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10)])
            return fedsim.learning.models.from_keras_model(
                keras_model, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                input_spec=train_datasets[0].element_spec,
                metrics=[keras.metrics.SparseCategoricalAccuracy()])
    """
    if positional:
        if len(positional) > 4:
            raise TypeError(f"from_keras_model takes at most 5 positional arguments, got {1 + len(positional)}")
        if callable(positional[0]):  # TFF's order: loss, input_spec, loss_weights, metrics
            names = ("loss", "input_spec", "loss_weights", "metrics")
        else:  # the overview's order: a sample batch, then the loss
            names = ("sample_batch", "loss", "metrics")
        given = dict(loss=loss, input_spec=input_spec, loss_weights=loss_weights, metrics=metrics, sample_batch=sample_batch)
        for name, value in zip(names, positional):
            if given[name] is not None:
                raise TypeError(f"from_keras_model got two values for {name}")
            given[name] = value
        loss, input_spec, loss_weights, metrics, sample_batch = (given[k] for k in ("loss", "input_spec", "loss_weights", "metrics", "sample_batch"))
    if sample_batch is not None:
        if input_spec is not None:
            raise TypeError("from_keras_model takes input_spec or sample_batch, not both")
        input_spec = sample_batch
    if input_spec is None:
        raise TypeError("from_keras_model needs input_spec (the TensorSpecs of a batch) or a sample batch")
    if loss is None:
        raise TypeError("from_keras_model needs a loss, for example keras.losses.SparseCategoricalCrossentropy()")
    return KerasVariableModel(keras_model, loss, input_spec, metrics or [], loss_weights)
