"""fedsim.aws: the same serialized computations on real silos, through a serverless server.

The server is AWS Step Functions + Lambda + SNS/SQS + S3 + DynamoDB, declared by one
CloudFormation template (`template.template_path()`); `LocalStack` runs it on this machine
(moto server + a local stream loop). Silos run `python -m fedsim.aws.silo`.

Example::

    with fedsim.aws.LocalStack(["a", "b", "c"]) as stack:
        with fedsim.aws.execution_context(stack, silos=["a", "b", "c"]):
            output = process.next(process.initialize(), ["a", "b", "c"])
"""

from fedsim.aws.config import StackConfig
from fedsim.aws.context import AwsExecutionContext, RoundFailedError, RoundReport, execution_context
from fedsim.aws.handler import AggregationHandler, handler
from fedsim.aws.local import LocalStack
from fedsim.aws.silo import SiloAgent, load_silo_data
from fedsim.aws.template import template_path

__all__ = [
    "AggregationHandler",
    "AwsExecutionContext",
    "LocalStack",
    "RoundFailedError",
    "RoundReport",
    "SiloAgent",
    "StackConfig",
    "execution_context",
    "handler",
    "load_silo_data",
    "template_path",
]
