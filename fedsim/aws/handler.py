"""The Lambda entry point of the aggregation server: `fedsim.aws.handler.handler(event, context)`.

The results table's stream invokes it with batches of silo records; it hands them to one
`AggregationHandler` per container (`fedsim.aws.aggregation`), configured from the Lambda's
environment (`FEDSIM_BUCKET`, `FEDSIM_TABLE`, `FEDSIM_SERVER_QUEUE_URL`, optionally
`FEDSIM_ENDPOINT_URL`). An exception (AWS failing past every retry) fails the batch, which the
event source mapping redelivers. Importing this module loads TensorFlow and fedsim's core and
aws packages only: no Keras, so a cold start stays short.

Example (a DynamoDB stream event, as AWS documents its shape)::

    handler({"Records": [{"eventName": "INSERT", "dynamodb": {"NewImage": {...}}}]}, None)
"""

from __future__ import annotations

import os
from typing import Any, Optional

from fedsim.aws.aggregation import AggregationHandler
from fedsim.aws.config import StackConfig

__all__ = ["AggregationHandler", "handler"]


def config_from_environment(environment: Optional[dict] = None) -> StackConfig:
    """The stack as the Lambda's environment variables name it (the template sets them)."""
    environment = os.environ if environment is None else environment
    return StackConfig(
        region=environment.get("AWS_REGION", "us-east-1"),
        bucket=environment["FEDSIM_BUCKET"],
        table=environment["FEDSIM_TABLE"],
        stream_arn="",
        topic_arn="",
        state_machine_arn="",
        silo_queues={},
        endpoint_url=environment.get("FEDSIM_ENDPOINT_URL"),
        server_queue_url=environment.get("FEDSIM_SERVER_QUEUE_URL", ""),
    )


_HANDLER: Optional[AggregationHandler] = None


def handler(event: dict, context: Any) -> dict:
    """The Lambda entry point (DynamoDB stream event source).

    Args:
      event: the stream's batch: `{"Records": [...]}` in AWS's documented shape.
      context: the Lambda context (unused).

    Returns:
      `{"outcomes": [...]}`: what happened to each round the batch named.

    Raises:
      fedsim.aws.store.TransientStoreError: AWS kept failing; the batch is redelivered.
    """
    del context
    global _HANDLER
    if _HANDLER is None:
        _HANDLER = AggregationHandler(config_from_environment())
    return {"outcomes": _HANDLER.handle(event)}
