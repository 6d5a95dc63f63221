"""`LocalStack`: the serverless server on this machine, the embedded default.

It starts a moto server on a free loopback port in a child process, enables Step Functions
execution, deploys the package's CloudFormation template with `LocalEmulation=true`, creates the
state machine from the template's own definition through the API (moto ignores a template's
definition), and runs a local event-source-mapping loop that feeds the results table's stream
records to the same aggregation handler a Lambda would run. Stopping it stops every process
and thread it started.

    python -m fedsim.aws.local --silos a,b,c --config-out stack.json   # serve until Ctrl-C

Example::

    with LocalStack(silo_ids=["a", "b", "c"]) as stack:
        stack.config.to_json()    # what silo agents need (--stack-config)
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Callable, Optional, Sequence

import attrs
from absl import logging

from fedsim.aws import template
from fedsim.aws.config import StackConfig, silo_slots, stack_outputs
from fedsim.aws.aggregation import AggregationHandler

__all__ = ["LocalStack", "main"]

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's account
CREDENTIALS = {"access_key": "testing", "secret_key": "testing"}
# With IAM enforcement, moto lets this many requests through unsigned: the bootstrap that creates
# the operator's user (user, policy, attachment, access key). Every later request is checked.
_BOOTSTRAP_ACTIONS = 4
_TEMPLATES_BUCKET = "fedsim-local-templates"  # where a nested deployment's silo-group template is staged
_ALLOW_ALL = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalStack:
    """A moto server + the deployed template + the stream loop; a context manager."""

    def __init__(self, silo_ids: Sequence[str], stack_name: str = "fedsim", silo_visibility_timeout: int = 30,
                 poll_seconds: float = 0.05, enforce_iam: bool = True, silo_group_size: Optional[int] = None):
        """Describes the stack; `start()` (or `with`) runs it.

        Args:
            silo_ids: the silos' ids (unique, at least one).
            stack_name: the CloudFormation stack's name.
            silo_visibility_timeout: seconds a silo's round message stays hidden while it works.
            poll_seconds: the stream loop's polling interval.
            enforce_iam: moto checks IAM policies (it does for S3 and SQS, not DynamoDB): the server
                side uses an operator user's credentials, and each silo its own role's, assumed by its
                own IAM user (`silo_config(silo_id)`), so a silo cannot act as another.
            silo_group_size: deploy the silos as nested stacks of this many
                (`template.render_nested`), as a deployment beyond `template.MAX_RENDERED_SILOS` silos
                must; the default does so only then.

        Raises:
            ValueError: if `silo_ids` is empty or has duplicates.
        """
        silo_ids = list(silo_ids)
        if not silo_ids:
            raise ValueError("LocalStack needs at least one silo id")
        if silo_group_size is None and len(silo_ids) > template.MAX_RENDERED_SILOS:
            silo_group_size = template.SILO_GROUP_SIZE
        self.silo_group_size = silo_group_size
        if len(set(silo_ids)) != len(silo_ids):
            raise ValueError(f"silo ids must be unique, got {silo_ids}")
        self.silo_ids = silo_ids
        self.enforce_iam = enforce_iam
        self._silo_configs: dict = {}
        self.stack_name = stack_name
        self.silo_visibility_timeout = silo_visibility_timeout
        self.poll_seconds = poll_seconds
        self.port: Optional[int] = None
        self.config: Optional[StackConfig] = None
        self.handler: Optional[AggregationHandler] = None
        self._server: Optional[subprocess.Popen] = None
        self._stop = threading.Event()
        self._loop: Optional[threading.Thread] = None
        self.handler_errors: list = []
        self.handler_retries: list = []
        # Where the stream loop sends each batch of records: the aggregation handler, as the
        # event source mapping would. Replace it to observe, hold or redirect the stream.
        self.deliver_records: Callable[[list], None] = self.handle_records

    # lifecycle -----------------------------------------------------------------------------------

    def __enter__(self) -> "LocalStack":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> "LocalStack":
        """Starts a moto server on loopback, deploys the template and starts the stream loop.

        Returns:
            The stack itself (`config` now holds the operator's `StackConfig`).

        Raises:
            RuntimeError: if the server does not come up or the stack does not deploy.
        """
        self.port = _free_port()
        endpoint = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, MOTO_PORT=str(self.port), AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                   AWS_DEFAULT_REGION=REGION)
        if self.enforce_iam:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(_BOOTSTRAP_ACTIONS)
        self._server = subprocess.Popen(
            # the file, not `-m fedsim.aws.moto_server`: the server process need not import fedsim (and TensorFlow)
            [sys.executable, str(pathlib.Path(__file__).with_name("moto_server.py")), "-H", "127.0.0.1", "-p", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        try:
            self._wait_until_up(endpoint)
            _post_json(f"{endpoint}/moto-api/config", {"stepfunctions": {"execute_state_machine": True}})
            self.config = self._deploy(endpoint)
            self.handler = AggregationHandler(self.config)
            self._loop = threading.Thread(target=self._stream_loop, name="fedsim-local-stream", daemon=True)
            self._loop.start()
        except BaseException:
            self.stop()
            raise
        logging.info("local stack up at %s (silos %s)", endpoint, ", ".join(self.silo_ids))
        return self

    def stop(self) -> None:
        """Stops the stream loop and the moto server (idempotent)."""
        self._stop.set()
        if self._loop is not None:
            self._loop.join(timeout=10)
        if self._server is not None and self._server.poll() is None:
            try:
                os.killpg(self._server.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self._server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._server.pid, signal.SIGKILL)
                self._server.wait()

    def _wait_until_up(self, endpoint: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._server.poll() is not None:
                raise RuntimeError(f"the moto server exited with code {self._server.returncode} (is moto[server] installed?)")
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"the moto server did not answer at {endpoint} within {timeout}s")

    # deployment -----------------------------------------------------------------------------------

    def silo_config(self, silo_id: str) -> StackConfig:
        """The stack as silo `silo_id` sees it: its own role's credentials.

        What its agent and `--stack-config` file get. Without IAM enforcement, the operator's.

        Args:
            silo_id: one of the stack's silos.

        Returns:
            The silo's `StackConfig`.

        Raises:
            ValueError: if `silo_id` is not a silo of this stack.
        """
        if silo_id not in self.silo_ids:
            raise ValueError(f"{silo_id!r} is not a silo of this stack ({self.silo_ids})")
        return self._silo_configs.get(silo_id, self.config)

    def _operator(self, endpoint: str) -> dict:
        """The credentials the server side uses: an operator user (created unsigned, first) under IAM enforcement."""
        if not self.enforce_iam:
            return dict(endpoint_url=endpoint, **CREDENTIALS)
        iam = StackConfig(region=REGION, bucket="", table="", stream_arn="", topic_arn="", state_machine_arn="",
                          silo_queues={}, endpoint_url=endpoint, **CREDENTIALS).client("iam")
        iam.create_user(UserName="fedsim-operator")
        policy = iam.create_policy(PolicyName="fedsim-operator", PolicyDocument=_ALLOW_ALL)["Policy"]["Arn"]
        iam.attach_user_policy(UserName="fedsim-operator", PolicyArn=policy)
        key = iam.create_access_key(UserName="fedsim-operator")["AccessKey"]
        return dict(endpoint_url=endpoint, access_key=key["AccessKeyId"], secret_key=key["SecretAccessKey"])

    def _silo_users(self, bootstrap: StackConfig) -> dict:
        """One IAM user per silo, allowed only to assume its own silo role: silo id -> (user ARN, key)."""
        iam = bootstrap.client("iam")
        users = {}
        for index, silo in enumerate(self.silo_ids, start=1):
            name = f"fedsim-silo-{index}"
            arn = iam.create_user(UserName=name)["User"]["Arn"]
            iam.put_user_policy(UserName=name, PolicyName="assume-own-role", PolicyDocument=json.dumps({
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": f"arn:aws:iam::{ACCOUNT}:role/*"}],
            }))
            users[silo] = (arn, iam.create_access_key(UserName=name)["AccessKey"])
        return users

    def _create_stack(self, bootstrap: StackConfig, users: dict) -> None:
        """The shipped template (or one rendered with more slots, or nested silo groups), deployed."""
        principals = [users[silo][0] if silo in users else "" for silo in self.silo_ids]
        parameters = {"LocalEmulation": "true", "SiloVisibilityTimeout": str(self.silo_visibility_timeout)}
        if self.silo_group_size is not None:
            s3 = bootstrap.client("s3")
            s3.create_bucket(Bucket=_TEMPLATES_BUCKET)
            server, group = template.render_nested(
                len(self.silo_ids), self.silo_group_size,
                group_template_url=f"https://s3.amazonaws.com/{_TEMPLATES_BUCKET}/{template.SILO_GROUP_FILE}")
            s3.put_object(Bucket=_TEMPLATES_BUCKET, Key=template.SILO_GROUP_FILE, Body=template.to_yaml(group).encode())
            body = template.to_yaml(server)
            parameters.update(template.silo_group_parameters(self.silo_ids, principals, self.silo_group_size))
        else:
            if len(self.silo_ids) <= template.MAX_SILOS:
                body = template.template_path().read_text()
            else:
                body = template.render_yaml(len(self.silo_ids))
            for index, (silo, principal) in enumerate(zip(self.silo_ids, principals), start=1):
                parameters[f"Silo{index}Id"] = silo
                if principal:
                    parameters[f"Silo{index}Principal"] = principal
        bootstrap.client("cloudformation").create_stack(
            StackName=self.stack_name, TemplateBody=body, Capabilities=["CAPABILITY_IAM"],
            Parameters=[{"ParameterKey": key, "ParameterValue": value} for key, value in parameters.items()],
        )

    def _deploy(self, endpoint: str) -> StackConfig:
        connection = self._operator(endpoint)
        bootstrap = StackConfig(region=REGION, bucket="", table="", stream_arn="", topic_arn="", state_machine_arn="",
                                silo_queues={}, **connection)
        users = self._silo_users(bootstrap) if self.enforce_iam else {}
        self._create_stack(bootstrap, users)
        cloudformation = bootstrap.client("cloudformation")
        stack = cloudformation.describe_stacks(StackName=self.stack_name)["Stacks"][0]
        if stack["StackStatus"] != "CREATE_COMPLETE":
            raise RuntimeError(f"the local stack is {stack['StackStatus']}: {stack.get('StackStatusReason', '')}")
        outputs = stack_outputs(cloudformation, self.stack_name)
        slots = silo_slots(outputs)
        if sorted(slots) != sorted(self.silo_ids):
            raise RuntimeError(f"the local stack has silo slots for {sorted(slots)}, not {sorted(self.silo_ids)}")
        # moto skips AWS::SNS::Subscription-like details it cannot emulate: check the fan-out is there.
        sns = bootstrap.client("sns")
        subscribed = set()
        for page in sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=outputs["TopicArn"]):
            subscribed.update(s["Endpoint"] for s in page["Subscriptions"])
        sqs = bootstrap.client("sqs")
        queue_urls = [outputs[f"{slots[silo]}QueueUrl"] for silo in self.silo_ids] + [outputs["ServerQueueUrl"]]
        for queue_url in queue_urls:
            queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            if queue_arn not in subscribed:
                sns.subscribe(TopicArn=outputs["TopicArn"], Protocol="sqs", Endpoint=queue_arn)
        # moto ignores the bucket's VersioningConfiguration in a template: set what the template declares.
        versioning = template.load_template()["Resources"]["ModelBucket"]["Properties"]["VersioningConfiguration"]
        bootstrap.client("s3").put_bucket_versioning(Bucket=outputs["BucketName"], VersioningConfiguration=versioning)
        state_machine = bootstrap.client("stepfunctions").create_state_machine(
            name=f"{self.stack_name}-rounds",
            definition=template.definition_from_template(template.load_template(), outputs["TopicArn"]),
            roleArn=outputs["StateMachineRoleArn"],
        )["stateMachineArn"]
        config = StackConfig.from_outputs(outputs, REGION, state_machine_arn=state_machine, **connection)
        iam = bootstrap.client("iam")
        for silo, (_, key) in users.items():  # each silo assumes its own role with its own user's key
            role_arn = outputs[f"{slots[silo]}RoleArn"]
            # moto keeps a template's inline role policies in a form its own policy checker cannot
            # read; putting the same documents back through the IAM API stores them as it expects.
            role_name = role_arn.rsplit("/", 1)[-1]
            for policy_name in iam.list_role_policies(RoleName=role_name)["PolicyNames"]:
                document = iam.get_role_policy(RoleName=role_name, PolicyName=policy_name)["PolicyDocument"]
                if isinstance(document, str):  # moto returns the Python repr of the template's dict
                    document = ast.literal_eval(document)
                iam.put_role_policy(RoleName=role_name, PolicyName=policy_name,
                                    PolicyDocument=json.dumps(_as_moto_checks_it(document)))
            sts = attrs.evolve(config, access_key=key["AccessKeyId"], secret_key=key["SecretAccessKey"]).client("sts")
            credentials = sts.assume_role(RoleArn=role_arn, RoleSessionName=f"fedsim-{silo}",
                                          DurationSeconds=43200)["Credentials"]
            self._silo_configs[silo] = attrs.evolve(
                config, access_key=credentials["AccessKeyId"], secret_key=credentials["SecretAccessKey"],
                session_token=credentials["SessionToken"], server_queue_url="")
        return config

    # the event source mapping -------------------------------------------------------------------

    def _stream_loop(self) -> None:
        streams = self.config.client("dynamodbstreams")
        iterators: dict = {}
        while not self._stop.is_set():
            try:
                description = streams.describe_stream(StreamArn=self.config.stream_arn)["StreamDescription"]
                for shard in description["Shards"]:
                    if shard["ShardId"] not in iterators:
                        iterators[shard["ShardId"]] = streams.get_shard_iterator(
                            StreamArn=self.config.stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
                        )["ShardIterator"]
                for shard_id, iterator in list(iterators.items()):
                    response = streams.get_records(ShardIterator=iterator, Limit=100)
                    iterators[shard_id] = response.get("NextShardIterator") or iterator
                    if response["Records"]:
                        self.deliver_records(response["Records"])
            except Exception as error:  # keep serving: a Lambda would be retried too
                if self._stop.is_set():
                    break
                logging.warning("local stream loop: %s: %s", type(error).__name__, error)
            self._stop.wait(self.poll_seconds)

    def handle_records(self, records: list) -> None:
        """Runs the aggregation handler on a batch of stream records.

        A batch whose handler raised is redelivered as the deployed event source mapping does
        (`template.STREAM_RETRY_ATTEMPTS` more times). Errors of retried attempts are kept in
        `handler_retries`; a batch that failed every attempt, in `handler_errors`.

        Args:
            records: DynamoDB stream records, in the stream's shape.
        """
        for attempt in range(1 + template.STREAM_RETRY_ATTEMPTS):
            try:
                self.handler.handle({"Records": records})
                return
            except Exception as error:  # noqa: BLE001 - kept and retried, as the trigger would
                if attempt == template.STREAM_RETRY_ATTEMPTS:
                    self.handler_errors.append(error)
                    logging.exception("aggregation handler failed on every delivery of a batch")
                    return
                self.handler_retries.append(error)
                logging.warning("aggregation handler failed (%s: %s); redelivering the batch", type(error).__name__, error)
                time.sleep(min(0.5 * 2**attempt, 4.0))


def _as_moto_checks_it(document: dict) -> dict:
    """The policy as moto can check it. moto authorizes every DynamoDB request against the resource
    `*` and cannot evaluate `dynamodb:LeadingKeys` / `dynamodb:Attributes`, so DynamoDB statements
    are kept with resource `*` and without those conditions (otherwise every silo record would be
    refused). Locally, a silo can therefore write records under another partition key or with other
    attributes: what the handler never trusts anyway (verdicts and tokens are the server's). S3 and
    SQS statements are enforced as written."""
    statements = []
    for statement in document.get("Statement", []):
        actions = statement.get("Action", [])
        if any(a.startswith("dynamodb:") for a in ([actions] if isinstance(actions, str) else actions)):
            statement = dict(statement, Resource="*")
        condition = statement.get("Condition", {})
        kept = {op: {k: v for k, v in keys.items() if not k.startswith("dynamodb:")} for op, keys in condition.items()}
        kept = {op: keys for op, keys in kept.items() if keys}
        statement = {k: v for k, v in statement.items() if k != "Condition"}
        if kept:
            statement["Condition"] = kept
        statements.append(statement)
    return dict(document, Statement=statements)


def _post_json(url: str, document: dict) -> None:
    request = urllib.request.Request(url, data=json.dumps(document).encode(), method="POST", headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).read()


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedsim.aws.local", description="Serve the fedsim server on a local moto stack.")
    parser.add_argument("--silos", required=True, help="comma-separated silo ids")
    parser.add_argument("--config-out", default="fedsim-local-stack.json",
                        help="where to write the operator's stack config (each silo's goes beside it: NAME-<silo>.json)")
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.INFO)
    with LocalStack(args.silos.split(",")) as stack:
        with open(args.config_out, "w") as stream:
            stream.write(stack.config.to_json())
        stem, extension = os.path.splitext(args.config_out)
        for silo in stack.silo_ids:
            with open(f"{stem}-{silo}{extension or '.json'}", "w") as stream:
                stream.write(stack.silo_config(silo).to_json())
        logging.info("stack config written to %s, each silo's beside it; Ctrl-C stops the stack", args.config_out)
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
