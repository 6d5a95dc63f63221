"""fedsim.aws: the same serialized computations on real silos, through a serverless server.

The server is AWS Step Functions + Lambda + SNS/SQS + S3 + DynamoDB, declared by one
CloudFormation template (`template.template_path()`); `LocalStack` runs it on this machine
(moto server + a local stream loop). Silos run `python -m fedsim.aws.silo`.

Example::

    with fedsim.aws.LocalStack(["a", "b", "c"]) as stack:
        with fedsim.aws.execution_context(stack, silos=["a", "b", "c"]):
            output = process.next(process.initialize(), ["a", "b", "c"])
"""

import importlib

# The Lambda entry point `fedsim.aws.handler.handler` shares its name with its module: bound
# here, eagerly, so the package attribute is the function.
from fedsim.aws.handler import AggregationHandler, handler

# Attributes load their module on first use, so `python -m fedsim.aws.silo` (or `.local`,
# `.review`) runs its module once, as __main__, without it being imported by the package first.
_LAZY = {
    "StackConfig": "config", "StackUnreachableError": "config",
    "AwsExecutionContext": "context", "RoundFailedError": "context", "RoundReport": "context", "execution_context": "context",
    "LocalStack": "local",
    "RunLineage": "lineage", "export_model": "lineage", "fetch_global_model": "lineage", "read_lineage": "lineage",
    "StopWhen": "stopping", "StopWhenNoImprovement": "stopping",
    "SiloAgent": "silo", "load_silo_data": "silo",
    "template_path": "template",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fedsim.aws' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"fedsim.aws.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AggregationHandler",
    "AwsExecutionContext",
    "LocalStack",
    "RoundFailedError",
    "RoundReport",
    "RunLineage",
    "SiloAgent",
    "StackConfig",
    "StackUnreachableError",
    "StopWhen",
    "StopWhenNoImprovement",
    "execution_context",
    "export_model",
    "fetch_global_model",
    "handler",
    "load_silo_data",
    "read_lineage",
    "template_path",
]
