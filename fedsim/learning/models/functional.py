"""`FunctionalModel`: a model whose forward pass takes its weights as an argument, as in TFF.

A functional model holds no variables: `predict_on_batch(model_weights, x, training)` and
`loss(output, label)` are pure functions of tensors, and metrics are an
(initialize, update, finalize) triple over an explicit state. TFF's custom-algorithm tutorials
write client training against it directly; the learning algorithms accept one wherever they
accept a `model_fn` (it is turned into a `VariableModel` with `model_from_functional`).

`functional_model_from_keras` builds one from a Keras 3 model through Keras' own
`stateless_call`, so the Keras layers run unchanged on weights given as tensors.

Example::

    functional = fedsim.learning.models.functional_model_from_keras(
        keras_model, loss_fn=keras.losses.SparseCategoricalCrossentropy(),
        input_spec=(tf.TensorSpec([None, 784]), tf.TensorSpec([None], tf.int32)),
        metrics_constructor=collections.OrderedDict(accuracy=keras.metrics.SparseCategoricalAccuracy))
    process = fedsim.learning.algorithms.build_weighted_fed_avg(
        functional, client_optimizer_fn=fedsim.learning.optimizers.build_sgdm(0.1))
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Optional, Union

import keras
import numpy as np
import tensorflow as tf

from fedsim.learning.models.counters import ExampleCounters
from fedsim.learning.models.keras_model import input_spec_of, split_batch
from fedsim.learning.models.model_weights import model_variables
from fedsim.learning.models.variable_model import BatchOutput, VariableModel

__all__ = [
    "FunctionalModel",
    "create_functional_metric_fns",
    "functional_model_from_keras",
    "model_from_functional",
]


def _empty_metrics_state() -> collections.OrderedDict:
    return collections.OrderedDict()


def _no_metrics_update(state, labels, batch_output, sample_weight=None):
    del labels, batch_output, sample_weight
    return state


def _no_metrics_finalize(state):
    del state
    return collections.OrderedDict()


class FunctionalModel:
    """A model parameterized by its weights (TFF's `tff.learning.models.FunctionalModel`).

    Keyword-only arguments, as TFF's.

    Args:
        initial_weights: `(trainable, non_trainable)`, each a sequence of numpy-convertible values.
        predict_on_batch_fn: `(model_weights, x, training) -> predictions`.
        loss_fn: `(output, label, sample_weight=None) -> loss`.
        metrics_fns: `(initialize, update, finalize)` over a mapping of metric name -> tuple of
            tensors (see `create_functional_metric_fns`); default: no metrics.
        input_spec: the specs of a batch, `(x, y)` or `{"x", "y"}`.

    Raises:
        TypeError: if `initial_weights` is not a pair of sequences of numpy values or
            `metrics_fns` not a triple of callables.

    Example:
        >>> model = fedsim.learning.models.functional_model_from_keras(keras_model, loss_fn, input_spec)
    """

    def __init__(
        self,
        *,
        initial_weights: Any,
        predict_on_batch_fn: Callable[..., Any],
        loss_fn: Callable[..., Any],
        metrics_fns: tuple = (_empty_metrics_state, _no_metrics_update, _no_metrics_finalize),
        input_spec: Any,
    ):
        if not (isinstance(initial_weights, (tuple, list)) and len(initial_weights) == 2):
            raise TypeError("initial_weights must be a pair (trainable, non_trainable) of sequences of values")
        for part in initial_weights:
            for value in part:
                if isinstance(value, (tf.Tensor, tf.Variable)):
                    raise TypeError("initial_weights must hold numpy values, not tensors or variables (as in TFF)")
        self._initial_weights = tuple(tuple(np.asarray(v) for v in part) for part in initial_weights)
        if not (isinstance(metrics_fns, (tuple, list)) and len(metrics_fns) == 3 and all(map(callable, metrics_fns))):
            raise TypeError("metrics_fns must be a triple of callables (initialize, update, finalize)")
        self._predict_on_batch_fn = predict_on_batch_fn
        self._loss_fn = loss_fn
        self._metrics_fns = tuple(metrics_fns)
        self._input_spec = input_spec_of(input_spec)

    @property
    def initial_weights(self) -> tuple:
        return self._initial_weights

    @property
    def input_spec(self) -> Any:
        return self._input_spec

    def predict_on_batch(self, model_weights: Any, x: Any, training: bool = True) -> Any:
        """The predictions for inputs `x` under `model_weights`.

        Args:
            model_weights: `(trainable, non_trainable)` tensors.
            x: a batch's inputs.
            training: whether this is a training step.

        Returns:
            The predictions.
        """
        return self._predict_on_batch_fn(model_weights, x, training)

    def loss(self, output: Any, label: Any, sample_weight: Any = None) -> Any:
        """The loss of `output` against `label`.

        Args:
            output: predictions.
            label: labels.
            sample_weight: optional per-example weights.

        Returns:
            A scalar loss.
        """
        return self._loss_fn(output, label, sample_weight)

    def initialize_metrics_state(self) -> Any:
        """The metrics' initial state (name -> tuple of zero tensors)."""
        return self._metrics_fns[0]()

    def update_metrics_state(self, state: Any, labels: Any, batch_output: Any, sample_weight: Any = None) -> Any:
        """The metrics' state after one batch.

        Args:
            state: the current metrics state.
            labels: the batch's labels.
            batch_output: the batch's `BatchOutput` (its predictions are used).
            sample_weight: optional per-example weights.

        Returns:
            The new metrics state.
        """
        return self._metrics_fns[1](state, labels, batch_output, sample_weight)

    def finalize_metrics(self, state: Any) -> Any:
        """The metrics' values from their state (or from a state summed over clients).

        Args:
            state: a metrics state.

        Returns:
            Metric name -> value.
        """
        return self._metrics_fns[2](state)


MetricsConstructor = Union[Callable[[], keras.metrics.Metric], "collections.abc.Mapping"]


def _metric_constructors(metrics_constructor: Optional[MetricsConstructor]) -> collections.OrderedDict:
    """Name -> constructor, from a constructor, a mapping of constructors, or a list of them."""
    if metrics_constructor is None:
        return collections.OrderedDict()
    if isinstance(metrics_constructor, collections.abc.Mapping):
        items = list(metrics_constructor.items())
    elif isinstance(metrics_constructor, (list, tuple)):
        items = [(None, c) for c in metrics_constructor]
    else:
        items = [(None, metrics_constructor)]
    constructors = collections.OrderedDict()
    for name, constructor in items:
        if not callable(constructor):
            raise TypeError(f"a metrics constructor must be a no-argument callable returning a Keras metric, got {constructor!r}")
        if name is None:
            name = constructor().name
        constructors[name] = constructor
    return constructors


def create_functional_metric_fns(metrics_constructor: MetricsConstructor) -> tuple:
    """Keras metrics as pure `(initialize, update, finalize)` functions (TFF's name).

    The state is name -> tuple of the metric's variable values; `update(state, labels,
    batch_output)` uses Keras' `stateless_update_state` on `batch_output.predictions`.

    Args:
        metrics_constructor: a no-argument function returning a Keras metric, or a list of
            such functions, or a dict name -> such function.

    Returns:
        `(initialize, update, finalize)`.

    Raises:
        TypeError: if a constructor is not callable.

    Example:
        >>> fns = create_functional_metric_fns([keras.metrics.SparseCategoricalAccuracy])
    """
    constructors = _metric_constructors(metrics_constructor)
    templates = collections.OrderedDict((name, c()) for name, c in constructors.items())

    def initialize():
        return collections.OrderedDict(
            (name, tuple(tf.zeros(v.shape, v.dtype) for v in metric.variables)) for name, metric in templates.items()
        )

    def update(state, labels, batch_output, sample_weight=None):
        predictions = batch_output.predictions if hasattr(batch_output, "predictions") else batch_output
        return collections.OrderedDict(
            (name, tuple(metric.stateless_update_state(list(state[name]), labels, predictions, sample_weight=sample_weight)))
            for name, metric in templates.items()
        )

    def finalize(state):
        return collections.OrderedDict((name, metric.stateless_result(list(state[name]))) for name, metric in templates.items())

    return initialize, update, finalize


def functional_model_from_keras(
    keras_model: Union[keras.Model, Callable[[], keras.Model]],
    loss_fn: Callable[..., Any],
    input_spec: Any,
    metrics_constructor: Optional[MetricsConstructor] = None,
) -> FunctionalModel:
    """A `FunctionalModel` running a Keras 3 model on weights given as tensors.

    The Keras model (or the one `keras_model()` builds) is a template: its weights at this call
    are the initial weights, and its layers run through `stateless_call`. Random layers get a
    fresh seed at each training call.

    Args:
        keras_model: a Keras model, or a no-argument function building one.
        loss_fn: a Keras loss `(y_true, y_pred, sample_weight=None) -> loss`.
        input_spec: the specs of a batch.
        metrics_constructor: as `create_functional_metric_fns` takes.

    Returns:
        The `FunctionalModel`.

    Raises:
        TypeError: if `keras_model` is neither a model nor a function building one.
    """
    template = keras_model() if not isinstance(keras_model, keras.Model) and callable(keras_model) else keras_model
    if not isinstance(template, keras.Model):
        raise TypeError(f"functional_model_from_keras needs a keras.Model or a function building one, got {keras_model!r}")
    trainable, non_trainable = model_variables(template)
    weight_ids = {id(v) for v in trainable + non_trainable}
    # Keras' stateless_call takes every non-trainable variable; RNG state is not a model weight.
    layout = [(id(v) in weight_ids, np.asarray(v)) for v in template.non_trainable_variables]

    def predict_on_batch(model_weights, x, training=True):
        trainable_values, non_trainable_values = model_weights
        given = iter(list(non_trainable_values))
        values = []
        for is_weight, initial in layout:
            if is_weight:
                values.append(next(given))
            elif training:  # a seed state: fresh draws per call
                values.append(tf.cast(tf.random.uniform(initial.shape, maxval=2**30, dtype=tf.int32), initial.dtype))
            else:
                values.append(tf.constant(initial))
        outputs, _ = template.stateless_call(list(trainable_values), values, x, training=training)
        return outputs

    def loss(output, label, sample_weight=None):
        return loss_fn(label, output, sample_weight=sample_weight)

    return FunctionalModel(
        initial_weights=([np.asarray(v) for v in trainable], [np.asarray(v) for v in non_trainable]),
        predict_on_batch_fn=predict_on_batch,
        loss_fn=loss,
        metrics_fns=create_functional_metric_fns(metrics_constructor) if metrics_constructor else
        (_empty_metrics_state, _no_metrics_update, _no_metrics_finalize),
        input_spec=input_spec,
    )


class _FunctionalVariableModel(VariableModel):
    """A `FunctionalModel` with its weights and metric state held in variables."""

    def __init__(self, functional_model: FunctionalModel, metrics_fns: Optional[tuple]):
        self._model = functional_model
        initial_trainable, initial_non_trainable = functional_model.initial_weights
        self._trainable = [tf.Variable(v, name=f"trainable_{i}") for i, v in enumerate(initial_trainable)]
        self._non_trainable = [tf.Variable(v, trainable=False, name=f"non_trainable_{i}") for i, v in enumerate(initial_non_trainable)]
        self._counters = ExampleCounters()
        if metrics_fns is None:
            metrics_fns = (functional_model.initialize_metrics_state, functional_model.update_metrics_state,
                           functional_model.finalize_metrics)
        self._initialize, self._update, self._finalize = metrics_fns
        initial_state = self._initialize()  # a metric named like a counter (e.g. `loss`) replaces it in the report
        self._metric_state = collections.OrderedDict(
            (name, [tf.Variable(v, trainable=False) for v in tf.nest.flatten(values)]) for name, values in initial_state.items()
        )
        self._metric_structure = initial_state

    @property
    def trainable_variables(self) -> list:
        return list(self._trainable)

    @property
    def non_trainable_variables(self) -> list:
        return list(self._non_trainable)

    @property
    def local_variables(self) -> list:
        return self._counters.variables + [v for values in self._metric_state.values() for v in values]

    @property
    def input_spec(self) -> Any:
        return self._model.input_spec

    def predict_on_batch(self, x: Any, training: bool = True) -> Any:
        weights = ([tf.convert_to_tensor(v) for v in self._trainable], [tf.convert_to_tensor(v) for v in self._non_trainable])
        return self._model.predict_on_batch(weights, x, training)

    def _state(self) -> Any:
        return collections.OrderedDict(
            (name, tf.nest.pack_sequence_as(self._metric_structure[name], [tf.convert_to_tensor(v) for v in variables]))
            for name, variables in self._metric_state.items()
        )

    def forward_pass(self, batch_input: Any, training: bool = True) -> BatchOutput:
        x, y = split_batch(batch_input)
        predictions = self.predict_on_batch(x, training=training)
        loss = self._model.loss(predictions, y)
        num_examples = tf.shape(tf.nest.flatten(x)[0])[0]
        output = BatchOutput(loss=loss, predictions=predictions, num_examples=num_examples)
        self._counters.update(loss, num_examples)
        new_state = self._update(self._state(), y, output)
        for name, variables in self._metric_state.items():
            for variable, value in zip(variables, tf.nest.flatten(new_state[name])):
                variable.assign(value)
        return output

    def report_local_unfinalized_metrics(self) -> dict:
        report = self._counters.report()
        for name, variables in self._metric_state.items():
            report[name] = [tf.convert_to_tensor(v) for v in variables]
        return report

    def metric_finalizers(self) -> dict:
        finalizers = self._counters.finalizers()
        for name in self._metric_state:
            finalizers[name] = self._finalizer(name)
        return finalizers

    def _finalizer(self, name: str) -> Callable[[list], Any]:
        def finalize(values: list) -> Any:
            # One metric's summed values, the others at their initial state: each metric's
            # result depends only on its own state (as for metrics made from Keras).
            state = self._initialize()
            state[name] = tf.nest.pack_sequence_as(self._metric_structure[name], list(values))
            return self._finalize(state)[name]

        return finalize

    def reset_metrics(self) -> None:
        self._counters.reset()
        for name, values in self._initialize().items():
            for variable, value in zip(self._metric_state[name], tf.nest.flatten(values)):
                variable.assign(value)


def model_from_functional(functional_model: FunctionalModel, metric_constructors: tuple = ()) -> VariableModel:
    """A `VariableModel` with the functional model's forward pass and loss (TFF's name).

    Call it inside a `model_fn`: the variables it makes belong to the computation being traced.

    Args:
        functional_model: a `FunctionalModel`.
        metric_constructors: Keras metric constructors that replace the functional model's metrics.

    Returns:
        A `VariableModel`.

    Raises:
        TypeError: if `functional_model` is not a `FunctionalModel`.
    """
    if not isinstance(functional_model, FunctionalModel):
        raise TypeError(f"model_from_functional needs a FunctionalModel, got {functional_model!r}")
    metrics_fns = create_functional_metric_fns(list(metric_constructors)) if metric_constructors else None
    return _FunctionalVariableModel(functional_model, metrics_fns)
