"""Process templates: `IterativeProcess`, `MeasuredProcess` (and later `AggregationProcess`)."""

from fedsim.templates.errors import ProcessTypeError
from fedsim.templates.iterative_process import IterativeProcess
from fedsim.templates.measured_process import MeasuredProcess, MeasuredProcessOutput

__all__ = ["IterativeProcess", "MeasuredProcess", "MeasuredProcessOutput", "ProcessTypeError"]
