"""Process templates: `IterativeProcess`, `MeasuredProcess`, `AggregationProcess`."""

from fedsim.templates.aggregation_process import AggregationProcess
from fedsim.templates.errors import ProcessTypeError
from fedsim.templates.iterative_process import IterativeProcess
from fedsim.templates.measured_process import MeasuredProcess, MeasuredProcessOutput

__all__ = ["AggregationProcess", "IterativeProcess", "MeasuredProcess", "MeasuredProcessOutput", "ProcessTypeError"]
