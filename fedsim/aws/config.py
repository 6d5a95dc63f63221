"""`StackConfig`: where a deployed server's pieces are (from the stack outputs), and clients for them.

Example::

    config = StackConfig.from_stack("fedsim", region="eu-west-1")      # a real deployment
    config = StackConfig.from_json(pathlib.Path("stack.json").read_text())  # what LocalStack wrote
"""

from __future__ import annotations

import json
from typing import Any, Optional

import attrs

__all__ = ["StackConfig", "StackUnreachableError", "silo_slots", "stack_outputs"]


class StackUnreachableError(ConnectionError):
    """The stack's endpoint does not answer (a local stack that is not running, a wrong region)."""


@attrs.frozen
class StackConfig:
    """Where a deployed (or local) stack is and the credentials to reach it.

    Written as JSON for silos (`--stack-config`) by the operator; each silo's holds its own
    role's credentials and only its own queue.

    Args:
        region: the AWS region.
        bucket: the S3 bucket of computations, broadcasts and results.
        table: the DynamoDB table of round items.
        stream_arn: the table's stream (the aggregation handler's trigger).
        topic_arn: the SNS topic round messages go out on.
        state_machine_arn: the Step Functions state machine that runs rounds.
        silo_queues: silo id -> its SQS queue URL.
        endpoint_url: the local stack's endpoint; None on AWS.
        access_key: the access key id (None: boto3's default credential chain).
        secret_key: the secret access key.
        server_queue_url: the server's copy of the round messages (task tokens); not for silos.
        session_token: with temporary (assumed-role) credentials.
    """
    region: str
    bucket: str
    table: str
    stream_arn: str
    topic_arn: str
    state_machine_arn: str
    silo_queues: dict  # silo id -> queue URL
    endpoint_url: Optional[str] = None  # the local stack's; None on AWS
    access_key: Optional[str] = None
    secret_key: Optional[str] = None
    server_queue_url: str = ""  # the server's copy of the round messages (task tokens); not for silos
    session_token: Optional[str] = None  # with temporary (assumed-role) credentials

    def client(self, service: str, probe: bool = False) -> Any:
        """A boto3 client for `service` with these credentials and endpoint.

        Args:
            service: a boto3 service name (`"s3"`, `"dynamodb"`, ...).
            probe: short timeouts and one attempt, to check reachability.

        Returns:
            The client (standard retry mode, 5 attempts, unless probing).
        """
        import boto3
        from botocore.config import Config

        if probe:
            settings = Config(connect_timeout=3, read_timeout=5, retries={"max_attempts": 1, "mode": "standard"})
        else:
            settings = Config(retries={"max_attempts": 5, "mode": "standard"})
        return boto3.client(
            service,
            region_name=self.region,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            aws_session_token=self.session_token,
            config=settings,
        )

    def check_reachable(self, queue_url: Optional[str] = None) -> None:
        """Raises `StackUnreachableError` (one line) if the stack's endpoint does not answer.

        Any answer counts, an access error included: only a connection that fails is unreachable.

        Args:
            queue_url: a queue to probe (default: the endpoint's SQS service).

        Raises:
            StackUnreachableError: if the connection fails.
        """
        from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

        sqs = self.client("sqs", probe=True)
        try:
            if queue_url is not None:
                sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
            else:
                sqs.list_queues(MaxResults=1)
        except ClientError:
            return
        except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError):
            where = self.endpoint_url or f"AWS region {self.region}"
            raise StackUnreachableError(f"the stack at {where} does not answer; is it running?") from None

    def to_json(self) -> str:
        """The config as JSON, the form `--stack-config` files hold."""
        return json.dumps(attrs.asdict(self), sort_keys=True, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "StackConfig":
        return cls(**json.loads(text))

    @classmethod
    def from_outputs(cls, outputs: dict, region: str, state_machine_arn: Optional[str] = None, **connection: Any) -> "StackConfig":
        silo_queues = {silo: outputs[f"{slot}QueueUrl"] for silo, slot in silo_slots(outputs).items()}
        return cls(
            region=region,
            bucket=outputs["BucketName"],
            table=outputs["TableName"],
            stream_arn=outputs["StreamArn"],
            topic_arn=outputs["TopicArn"],
            state_machine_arn=state_machine_arn or outputs["StateMachineArn"],
            silo_queues=silo_queues,
            server_queue_url=outputs.get("ServerQueueUrl", ""),
            **connection,
        )

    @classmethod
    def from_stack(cls, stack_name: str, region: str) -> "StackConfig":
        """Reads a deployed stack's outputs with the default AWS credentials, nested silo groups included."""
        import boto3

        cloudformation = boto3.client("cloudformation", region_name=region)
        return cls.from_outputs(stack_outputs(cloudformation, stack_name), region)


def silo_slots(outputs: dict) -> dict:
    """Silo id -> the prefix of its slot's outputs (`Silo3`, or `SiloGroup2Slot7` in a nested group)."""
    return {value: name[: -len("IdOut")] for name, value in outputs.items() if name.endswith("IdOut")}


def stack_outputs(cloudformation: Any, stack_name: str) -> dict:
    """A stack's outputs; a nested silo group's (`SiloGroup<g>StackId`) are merged in as `SiloGroup<g><name>`."""
    def outputs_of(name: str) -> dict:
        stacks = cloudformation.describe_stacks(StackName=name)["Stacks"]
        return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}

    outputs = outputs_of(stack_name)
    for key, stack_id in list(outputs.items()):
        if key.startswith("SiloGroup") and key.endswith("StackId"):
            group = key[: -len("StackId")]
            outputs.update({f"{group}{name}": value for name, value in outputs_of(stack_id).items()})
    return outputs
