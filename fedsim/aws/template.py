"""The CloudFormation template of the serverless server, and its state machine.

`server.yaml` (shipped in this package) is rendered by `render()`; a test checks they agree, and
`python -m fedsim.aws.template > fedsim/aws/server.yaml` regenerates it. CloudFormation has no
loop that moto also accepts (`Fn::ForEach` fails there), so the template has `MAX_SILOS` silo
slots, each created when its `Silo<i>Id` parameter is set; `render(N)` renders up to 60, and
`render_nested(N)` any number, as nested stacks of `SILO_GROUP_SIZE` slots. With `LocalEmulation=true` the Lambda,
its event source mapping and the state machine are left out: the local stack creates the state
machine through the API (moto ignores a template's definition) and feeds the stream to the
handler itself.

Example::

    template_text = fedsim.aws.template.template_path().read_text()
    definition = fedsim.aws.template.state_machine_definition(topic_arn)
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Optional

import attrs
import yaml

__all__ = ["MAX_RENDERED_SILOS", "MAX_SILOS", "SILO_GROUP_SIZE", "definition_from_template", "load_template", "render",
           "render_nested", "render_yaml", "silo_group_parameters", "silo_group_template", "state_machine_definition",
           "template_path", "to_yaml"]

MAX_SILOS = 10  # the slots of the shipped template; `render(silo_slots=N)` renders more
# CloudFormation's limits (200 parameters, 500 resources, 200 outputs) allow this many slots of
# this layout (2 parameters, 5 resources and 3 outputs each); beyond it, silos need nested stacks.
MAX_RENDERED_SILOS = 60
# Beyond that, `render_nested` puts silos in nested stacks of this many slots (5 resources and 3
# outputs each: 250 resources, 150 outputs), up to this many groups in one server template.
SILO_GROUP_SIZE = 50
MAX_SILO_GROUPS = 40
SILO_GROUP_FILE = "silo-group.yaml"
# What a silo's result record may hold (its role's PutItem is limited to these attributes).
SILO_RECORD_ATTRIBUTES = ("pk", "sk", "round_key", "received_at", "key", "sha256", "size",
                          "work_seconds", "written_at", "refused", "secagg")
TOPIC_PLACEHOLDER = "${GlobalModelReadyTopic}"


def template_path() -> pathlib.Path:
    """The path of the packaged CloudFormation template (`server.yaml`), as deployed.

    Returns:
        The template file's path.

    Example:
        >>> fedsim.aws.template_path().read_text()[:40]
    """
    return pathlib.Path(__file__).with_name("server.yaml")


def load_template() -> dict:
    return yaml.safe_load(template_path().read_text())


STREAM_RETRY_ATTEMPTS = 3  # a stream batch whose handler raised is delivered again this many times
PUBLISH_RETRY_ERRORS = ("SNS.ThrottledException", "SNS.InternalErrorException", "SNS.KMSThrottlingException")


def _publish(topic: str, step: str, next_state: str) -> dict:
    """A state that publishes a step's message with a task token and waits for the handler's answer."""
    return {
        "Type": "Task",
        "Resource": "arn:aws:states:::sns:publish.waitForTaskToken",
        "Parameters": {
            "TopicArn": topic,
            "Message": {
                "run_id.$": "$.run_id",
                "round.$": step,
                "manifest_key.$": "$.manifest_key",
                "silos.$": "$.silos",
                "task_token.$": "$$.Task.Token",
            },
        },
        "TimeoutSecondsPath": "$.round_deadline_seconds",
        "ResultPath": "$.outcome",
        # AWS's ordinary failures of the publish itself are retried (a round the handler failed is not)
        "Retry": [{"ErrorEquals": list(PUBLISH_RETRY_ERRORS), "IntervalSeconds": 1, "MaxAttempts": 6, "BackoffRate": 2.0}],
        "Next": next_state,
    }


def _definition(topic: str) -> dict:
    """The round loop, JSONPath only: publish a round with a task token and wait (deadline); then,
    if the handler says so, publish its evaluation step; continue or stop as the handler judged
    from the run's stopping rules (its answer carries the metrics and the reason to stop)."""
    carried = ["run_id", "manifest_key", "silos", "round_deadline_seconds"]
    go_on = {"Variable": "$.outcome.continue", "BooleanEquals": True, "Next": "NextRound"}
    return {
        "Comment": "fedsim: one federated round (+ its evaluation) per loop; the aggregation handler answers each step's task token",
        "StartAt": "PublishRound",
        "States": {
            "PublishRound": _publish(topic, "$.round", "AfterRound"),
            "AfterRound": {
                "Type": "Choice",
                "Choices": [{"Variable": "$.outcome.evaluate", "BooleanEquals": True, "Next": "PublishEvaluation"}, go_on],
                "Default": "Done",
            },
            "PublishEvaluation": _publish(topic, "$.outcome.eval_step", "AfterEvaluation"),
            "AfterEvaluation": {"Type": "Choice", "Choices": [go_on], "Default": "Done"},
            "NextRound": {
                "Type": "Pass",
                "Parameters": {**{f"{name}.$": f"$.{name}" for name in carried}, "round.$": "$.outcome.next_round"},
                "Next": "PublishRound",
            },
            "Done": {"Type": "Succeed"},
        },
    }


def state_machine_definition(topic_arn: str) -> str:
    """The definition as JSON, for creating the state machine through the API (local stack)."""
    return json.dumps(_definition(topic_arn), sort_keys=True)


def definition_from_template(template_document: dict, topic_arn: str) -> str:
    """The state machine's definition as the template declares it, with the topic filled in."""
    text, variables = template_document["Resources"]["RoundStateMachine"]["Properties"]["DefinitionString"]["Fn::Sub"]
    if set(variables) != {"GlobalModelReadyTopic"}:
        raise ValueError(f"unexpected variables in the template's state machine definition: {sorted(variables)}")
    return text.replace(TOPIC_PLACEHOLDER, topic_arn)


@attrs.frozen
class _ServerRefs:
    """How a silo slot refers to the server's shared pieces: by resource in the flat template,
    by parameter in a nested silo-group stack."""

    topic: Any
    bucket_arn_sub: str  # an `Fn::Sub` expression for the bucket's ARN
    table_arn: Any


_FLAT_REFS = _ServerRefs(topic={"Ref": "GlobalModelReadyTopic"}, bucket_arn_sub="${ModelBucket.Arn}",
                         table_arn={"Fn::GetAtt": ["ResultsTable", "Arn"]})
_GROUP_REFS = _ServerRefs(topic={"Ref": "TopicArn"}, bucket_arn_sub="${BucketArn}", table_arn={"Ref": "TableArn"})


def _topic_may_send_to(queue: str, topic: Any) -> dict:
    """The queue policy that lets the round topic (and only it) deliver to `queue`."""
    return {
        "Type": "AWS::SQS::QueuePolicy",
        "Properties": {
            "Queues": [{"Ref": queue}],
            "PolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [{
                    "Effect": "Allow",
                    "Principal": {"Service": "sns.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": {"Fn::GetAtt": [queue, "Arn"]},
                    "Condition": {"ArnEquals": {"aws:SourceArn": topic}},
                }],
            },
        },
    }


def _silo_resources(silo: str, silo_id: Any, principal: Any, refs: _ServerRefs) -> tuple:
    """One silo slot named `silo`: its queue (+ dead letters), role, subscription, and outputs.

    `silo_id` and `principal` are the slot's id and trusted principal as template expressions; the
    slot exists under condition `Has<silo>`, and its principal is used under `Has<silo>Principal`.
    """
    condition = f"Has{silo}"
    bucket = refs.bucket_arn_sub
    resources = {
        f"{silo}DeadLetterQueue": {
            "Type": "AWS::SQS::Queue",
            "Condition": condition,
            "Properties": {"MessageRetentionPeriod": 1209600, "SqsManagedSseEnabled": True},
        },
        f"{silo}Queue": {
            "Type": "AWS::SQS::Queue",
            "Condition": condition,
            "Properties": {
                "VisibilityTimeout": {"Ref": "SiloVisibilityTimeout"},
                "SqsManagedSseEnabled": True,
                "RedrivePolicy": {"deadLetterTargetArn": {"Fn::GetAtt": [f"{silo}DeadLetterQueue", "Arn"]}, "maxReceiveCount": 5},
            },
        },
        f"{silo}QueuePolicy": dict(_topic_may_send_to(f"{silo}Queue", refs.topic), Condition=condition),
        f"{silo}Role": {
            "Type": "AWS::IAM::Role",
            "Condition": condition,
            "Properties": {
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [{
                        "Effect": "Allow",
                        "Principal": {"AWS": {"Fn::If": [
                            f"Has{silo}Principal",
                            principal,
                            {"Fn::If": [
                                "HasSiloAccount",
                                {"Fn::Sub": "arn:${AWS::Partition}:iam::${SiloAccountId}:root"},
                                {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"},
                            ]},
                        ]}},
                        "Action": "sts:AssumeRole",
                    }],
                },
                "Policies": [{
                    "PolicyName": "silo-least-privilege",
                    "PolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Sid": "OwnQueueOnly",
                                "Effect": "Allow",
                                "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes"],
                                "Resource": {"Fn::GetAtt": [f"{silo}Queue", "Arn"]},
                            },
                            {
                                "Sid": "ReadRoundObjects",
                                "Effect": "Allow",
                                "Action": "s3:GetObject",
                                "Resource": [  # not the server's carry, results or other silos' uploads
                                    {"Fn::Sub": f"{bucket}/computations/*"},
                                    {"Fn::Sub": f"{bucket}/runs/*/manifest.json"},
                                    {"Fn::Sub": f"{bucket}/runs/*/round-*/broadcast.npz"},
                                    {"Fn::Sub": f"{bucket}/runs/*/round-*/closed.json"},
                                    {"Fn::Sub": f"{bucket}/runs/*/round-*/secagg/*"},  # the server's protocol messages
                                ],
                            },
                            {
                                "Sid": "WriteOwnPrefixOnly",
                                "Effect": "Allow",
                                "Action": ["s3:PutObject", "s3:GetObject"],
                                "Resource": {"Fn::Sub": [f"{bucket}/silos/${{Id}}/*", {"Id": silo_id}]},
                            },
                            {
                                "Sid": "WriteOwnResultItemsOnly",
                                "Effect": "Allow",
                                "Action": "dynamodb:PutItem",
                                "Resource": refs.table_arn,
                                "Condition": {"ForAllValues:StringEquals": {
                                    "dynamodb:LeadingKeys": [silo_id],
                                    "dynamodb:Attributes": list(SILO_RECORD_ATTRIBUTES),
                                }},
                            },
                        ],
                    },
                }],
            },
        },
        f"{silo}Subscription": {
            "Type": "AWS::SNS::Subscription",
            "Condition": condition,
            "Properties": {"TopicArn": refs.topic, "Protocol": "sqs", "Endpoint": {"Fn::GetAtt": [f"{silo}Queue", "Arn"]}},
        },
    }
    outputs = {
        f"{silo}QueueUrl": {"Condition": condition, "Value": {"Ref": f"{silo}Queue"}},
        f"{silo}RoleArn": {"Condition": condition, "Value": {"Fn::GetAtt": [f"{silo}Role", "Arn"]}},
        f"{silo}IdOut": {"Condition": condition, "Value": silo_id},
    }
    return resources, outputs


def _not_empty(value: Any) -> dict:
    return {"Fn::Not": [{"Fn::Equals": [value, ""]}]}


def _shared_parameters() -> dict:
    return {
        "SiloAccountId": {"Type": "String", "Default": "", "Description": "account allowed to assume the silo roles (default: this one)"},
        "SiloVisibilityTimeout": {"Type": "Number", "Default": 900, "MinValue": 1,
                                  "Description": "seconds before an unfinished round message is redelivered to its silo"},
    }


def _server_template() -> dict:
    """The server's own pieces (bucket, table, topic, server queue, roles, Lambda, state machine),
    without silo slots."""
    parameters: dict[str, Any] = {
        "LocalEmulation": {"Type": "String", "AllowedValues": ["true", "false"], "Default": "false",
                           "Description": "true on the local stack: no Lambda, no event source mapping, no state machine"},
        "HandlerImageUri": {"Type": "String", "Default": "",
                            "Description": "ECR image with fedsim whose command is fedsim.aws.handler.handler"},
        **_shared_parameters(),
    }
    conditions: dict[str, Any] = {
        "IsLocal": {"Fn::Equals": [{"Ref": "LocalEmulation"}, "true"]},
        "NotLocal": {"Fn::Not": [{"Condition": "IsLocal"}]},
        "HasSiloAccount": _not_empty({"Ref": "SiloAccountId"}),
    }
    resources: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    resources.update({
        "ModelBucket": {
            "Type": "AWS::S3::Bucket",
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
            "Properties": {
                "VersioningConfiguration": {"Status": "Enabled"},
                "BucketEncryption": {"ServerSideEncryptionConfiguration": [{"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]},
                "PublicAccessBlockConfiguration": {
                    "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True,
                },
            },
        },
        "ResultsTable": {
            "Type": "AWS::DynamoDB::Table",
            "Properties": {
                "BillingMode": "PAY_PER_REQUEST",
                "AttributeDefinitions": [
                    {"AttributeName": "pk", "AttributeType": "S"},
                    {"AttributeName": "sk", "AttributeType": "S"},
                    {"AttributeName": "round_key", "AttributeType": "S"},
                ],
                "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
                "GlobalSecondaryIndexes": [{
                    "IndexName": "by_round",
                    "KeySchema": [{"AttributeName": "round_key", "KeyType": "HASH"}, {"AttributeName": "pk", "KeyType": "RANGE"}],
                    "Projection": {"ProjectionType": "ALL"},
                }],
                "StreamSpecification": {"StreamViewType": "NEW_IMAGE"},
                "SSESpecification": {"SSEEnabled": True},
            },
        },
        "GlobalModelReadyTopic": {
            "Type": "AWS::SNS::Topic",
            "Properties": {"TopicName": {"Fn::Sub": "${AWS::StackName}-global_model_ready"}},
        },
        # The server's own copy of every round message: the handler takes the round's task token
        # from here (never from a silo's record) and stores it in the round item.
        "ServerQueue": {
            "Type": "AWS::SQS::Queue",
            "Properties": {"SqsManagedSseEnabled": True, "MessageRetentionPeriod": 1209600},
        },
        "ServerQueuePolicy": _topic_may_send_to("ServerQueue", {"Ref": "GlobalModelReadyTopic"}),
        "ServerSubscription": {
            "Type": "AWS::SNS::Subscription",
            "Properties": {
                "TopicArn": {"Ref": "GlobalModelReadyTopic"},
                "Protocol": "sqs",
                "Endpoint": {"Fn::GetAtt": ["ServerQueue", "Arn"]},
            },
        },
        "StateMachineRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Principal": {"Service": "states.amazonaws.com"}, "Action": "sts:AssumeRole"}],
                },
                "Policies": [{
                    "PolicyName": "publish-rounds",
                    "PolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [{"Effect": "Allow", "Action": "sns:Publish", "Resource": {"Ref": "GlobalModelReadyTopic"}}],
                    },
                }],
            },
        },
        "AggregationRole": {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "AssumeRolePolicyDocument": {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}],
                },
                "ManagedPolicyArns": [{"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"}],
                "Policies": [{
                    "PolicyName": "aggregate-rounds",
                    "PolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [
                            {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"], "Resource": {"Fn::Sub": "${ModelBucket.Arn}/*"}},
                            {"Effect": "Allow", "Action": ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query"],
                             "Resource": [{"Fn::GetAtt": ["ResultsTable", "Arn"]}, {"Fn::Sub": "${ResultsTable.Arn}/index/*"}]},
                            {"Effect": "Allow", "Action": ["dynamodb:GetRecords", "dynamodb:GetShardIterator", "dynamodb:DescribeStream",
                                                            "dynamodb:ListStreams"],
                             "Resource": {"Fn::GetAtt": ["ResultsTable", "StreamArn"]}},
                            {"Effect": "Allow", "Action": ["states:SendTaskSuccess", "states:SendTaskFailure"], "Resource": "*"},
                            {"Effect": "Allow", "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage"],
                             "Resource": {"Fn::GetAtt": ["ServerQueue", "Arn"]}},
                        ],
                    },
                }],
            },
        },
        "AggregationFunction": {
            "Type": "AWS::Lambda::Function",
            "Condition": "NotLocal",
            "Properties": {
                "PackageType": "Image",
                "Code": {"ImageUri": {"Ref": "HandlerImageUri"}},
                "Role": {"Fn::GetAtt": ["AggregationRole", "Arn"]},
                "Timeout": 900,
                "MemorySize": 4096,
                "ReservedConcurrentExecutions": 4,
                "Environment": {"Variables": {
                    "FEDSIM_BUCKET": {"Ref": "ModelBucket"},
                    "FEDSIM_TABLE": {"Ref": "ResultsTable"},
                    "FEDSIM_SERVER_QUEUE_URL": {"Ref": "ServerQueue"},
                }},
            },
        },
        "AggregationEventSourceMapping": {
            "Type": "AWS::Lambda::EventSourceMapping",
            "Condition": "NotLocal",
            "Properties": {
                "EventSourceArn": {"Fn::GetAtt": ["ResultsTable", "StreamArn"]},
                "FunctionName": {"Ref": "AggregationFunction"},
                "StartingPosition": "LATEST",
                "BatchSize": 10,
                "MaximumRetryAttempts": STREAM_RETRY_ATTEMPTS,
                # silo records, new or rewritten (a rewritten one is judged again, never trusted)
                "FilterCriteria": {"Filters": [{"Pattern": json.dumps(
                    {"eventName": ["INSERT", "MODIFY"], "dynamodb": {"NewImage": {"round_key": {"S": [{"exists": True}]}}}})}]},
            },
        },
        "RoundStateMachine": {
            "Type": "AWS::StepFunctions::StateMachine",
            "Condition": "NotLocal",
            "Properties": {
                "RoleArn": {"Fn::GetAtt": ["StateMachineRole", "Arn"]},
                "DefinitionString": {"Fn::Sub": [
                    json.dumps(_definition(TOPIC_PLACEHOLDER), indent=2, sort_keys=True),
                    {"GlobalModelReadyTopic": {"Ref": "GlobalModelReadyTopic"}},
                ]},
            },
        },
    })
    outputs.update({
        "BucketName": {"Value": {"Ref": "ModelBucket"}},
        "ServerQueueUrl": {"Value": {"Ref": "ServerQueue"}},
        "TableName": {"Value": {"Ref": "ResultsTable"}},
        "StreamArn": {"Value": {"Fn::GetAtt": ["ResultsTable", "StreamArn"]}},
        "TopicArn": {"Value": {"Ref": "GlobalModelReadyTopic"}},
        "StateMachineRoleArn": {"Value": {"Fn::GetAtt": ["StateMachineRole", "Arn"]}},
        "StateMachineArn": {"Condition": "NotLocal", "Value": {"Ref": "RoundStateMachine"}},
    })
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "fedsim serverless federated-learning server: Step Functions + SNS/SQS + S3 + DynamoDB + Lambda",
        "Parameters": parameters,
        "Conditions": conditions,
        "Resources": resources,
        "Outputs": outputs,
    }


def render(silo_slots: int = MAX_SILOS) -> dict:
    """The whole template as a dict, with `silo_slots` silo slots (`server.yaml` has `MAX_SILOS`).

    Each slot has parameters `Silo<i>Id` and `Silo<i>Principal`; beyond `MAX_RENDERED_SILOS` slots
    CloudFormation's limits need `render_nested`.
    """
    if not isinstance(silo_slots, int) or not 1 <= silo_slots <= MAX_RENDERED_SILOS:
        raise ValueError(f"a template has 1 to {MAX_RENDERED_SILOS} silo slots (CloudFormation's limits), got {silo_slots!r}; "
                         "use render_nested for more")
    document = _server_template()
    for index in range(1, silo_slots + 1):
        silo = f"Silo{index}"
        document["Parameters"][f"{silo}Id"] = {
            "Type": "String", "Default": "", "AllowedPattern": "^[A-Za-z0-9_-]{0,64}$",
            "Description": f"id of silo {index} (empty: no silo in this slot)"}
        document["Conditions"][f"Has{silo}"] = _not_empty({"Ref": f"{silo}Id"})
        document["Parameters"][f"{silo}Principal"] = {
            "Type": "String", "Default": "",
            "Description": f"the IAM principal ARN allowed to assume silo {index}'s role (default: the silo account's root)"}
        document["Conditions"][f"Has{silo}Principal"] = _not_empty({"Ref": f"{silo}Principal"})
        silo_resources, silo_outputs = _silo_resources(silo, {"Ref": f"{silo}Id"}, {"Ref": f"{silo}Principal"}, _FLAT_REFS)
        document["Resources"].update(silo_resources)
        document["Outputs"].update(silo_outputs)
    return document


def silo_group_template(group_size: int = SILO_GROUP_SIZE) -> dict:
    """The nested stack of `group_size` silo slots that `render_nested` instantiates once per group.

    Its parameters `SiloIds` and `SiloPrincipals` are comma-separated lists padded by the parent
    with empty entries (an empty entry: no silo in that slot); the server's topic, bucket and table
    come in as parameters. Slot `j`'s outputs are `Slot<j>QueueUrl`, `Slot<j>RoleArn`, `Slot<j>IdOut`.
    """
    if not isinstance(group_size, int) or not 1 <= group_size <= MAX_RENDERED_SILOS:
        raise ValueError(f"a silo group has 1 to {MAX_RENDERED_SILOS} slots, got {group_size!r}")
    parameters: dict[str, Any] = {
        "SiloIds": {"Type": "CommaDelimitedList", "Description": "the group's silo ids, one per slot (empty: no silo)"},
        "SiloPrincipals": {"Type": "CommaDelimitedList", "Description": "each slot's trusted principal ARN (empty: the silo account's root)"},
        "TopicArn": {"Type": "String", "Description": "the server's round topic"},
        "BucketArn": {"Type": "String", "Description": "the server's model bucket"},
        "TableArn": {"Type": "String", "Description": "the server's results table"},
        **_shared_parameters(),
    }
    conditions: dict[str, Any] = {"HasSiloAccount": _not_empty({"Ref": "SiloAccountId"})}
    resources: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    for slot in range(group_size):
        silo = f"Slot{slot}"
        silo_id = {"Fn::Select": [slot, {"Ref": "SiloIds"}]}
        principal = {"Fn::Select": [slot, {"Ref": "SiloPrincipals"}]}
        conditions[f"Has{silo}"] = _not_empty(silo_id)
        conditions[f"Has{silo}Principal"] = _not_empty(principal)
        silo_resources, silo_outputs = _silo_resources(silo, silo_id, principal, _GROUP_REFS)
        resources.update(silo_resources)
        outputs.update(silo_outputs)
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": f"fedsim: a group of {group_size} silo slots (queues, roles, subscriptions), nested in the server's stack",
        "Parameters": parameters,
        "Conditions": conditions,
        "Resources": resources,
        "Outputs": outputs,
    }


def render_nested(silo_slots: int, group_size: int = SILO_GROUP_SIZE,
                  group_template_url: str = SILO_GROUP_FILE) -> tuple[dict, dict]:
    """The server template for any number of silos: `(server, silo_group)` templates.

    The server has one nested stack per `group_size` slots, each created when its `SiloGroup<g>Ids`
    parameter (comma-separated ids) is set, with `SiloGroup<g>Principals` beside it. Deploy with
    `aws cloudformation package` (it uploads `silo-group.yaml`, referred to by a relative path)
    and `deploy`; `StackConfig.from_stack` follows the nested stacks' outputs.

    Example::

        server, group = render_nested(200)   # 4 nested stacks of 50 slots
    """
    if not isinstance(silo_slots, int) or silo_slots < 1:
        raise ValueError(f"silo_slots must be a positive int, got {silo_slots!r}")
    group = silo_group_template(group_size)
    groups = -(-silo_slots // group_size)
    if groups > MAX_SILO_GROUPS:
        raise ValueError(f"{silo_slots} silos need {groups} groups of {group_size}; at most {MAX_SILO_GROUPS} fit one template")
    document = _server_template()
    del document["Conditions"]["HasSiloAccount"]  # used inside the groups, not here
    padding = "," * group_size  # the parent pads each list, so every `Fn::Select` in the group is in range
    for index in range(1, groups + 1):
        name = f"SiloGroup{index}"
        document["Parameters"][f"{name}Ids"] = {
            "Type": "String", "Default": "", "AllowedPattern": "^[A-Za-z0-9_,-]*$",
            "Description": f"comma-separated ids of up to {group_size} silos of group {index} (empty: no group)"}
        document["Parameters"][f"{name}Principals"] = {
            "Type": "String", "Default": "",
            "Description": f"comma-separated principal ARNs of group {index}'s silos, in the same order (empty entries: the silo account's root)"}
        document["Conditions"][f"Has{name}"] = _not_empty({"Ref": f"{name}Ids"})
        document["Resources"][f"{name}Stack"] = {
            "Type": "AWS::CloudFormation::Stack",
            "Condition": f"Has{name}",
            # a relative TemplateURL is what `aws cloudformation package` uploads and rewrites
            "Metadata": {"cfn-lint": {"config": {"ignore_checks": ["W3002"]}}},
            "Properties": {
                "TemplateURL": group_template_url,
                "Parameters": {
                    "SiloIds": {"Fn::Join": ["", [{"Ref": f"{name}Ids"}, padding]]},
                    "SiloPrincipals": {"Fn::Join": ["", [{"Ref": f"{name}Principals"}, padding]]},
                    "TopicArn": {"Ref": "GlobalModelReadyTopic"},
                    "BucketArn": {"Fn::GetAtt": ["ModelBucket", "Arn"]},
                    "TableArn": {"Fn::GetAtt": ["ResultsTable", "Arn"]},
                    "SiloAccountId": {"Ref": "SiloAccountId"},
                    "SiloVisibilityTimeout": {"Ref": "SiloVisibilityTimeout"},
                },
            },
        }
        document["Outputs"][f"{name}StackId"] = {"Condition": f"Has{name}", "Value": {"Ref": f"{name}Stack"}}
    return document, group


def silo_group_parameters(silo_ids: list, principals: Optional[list] = None,
                          group_size: int = SILO_GROUP_SIZE) -> dict:
    """The `SiloGroup<g>Ids` / `SiloGroup<g>Principals` parameter values of `render_nested`'s server."""
    principals = list(principals) if principals is not None else [""] * len(silo_ids)
    if len(principals) != len(silo_ids):
        raise ValueError(f"{len(silo_ids)} silo ids but {len(principals)} principals")
    values = {}
    for start in range(0, len(silo_ids), group_size):
        index = start // group_size + 1
        values[f"SiloGroup{index}Ids"] = ",".join(silo_ids[start:start + group_size])
        values[f"SiloGroup{index}Principals"] = ",".join(principals[start:start + group_size])
    return values


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # CloudFormation rejects YAML aliases


_HEADER = "# Generated by `python -m fedsim.aws.template`; edit fedsim/aws/template.py, not this file.\n"


def to_yaml(document: dict) -> str:
    """A template dict as CloudFormation YAML (no aliases), with the generated-file header."""
    return _HEADER + yaml.dump(document, Dumper=_NoAliases, sort_keys=False, width=120)


def render_yaml(silo_slots: int = MAX_SILOS) -> str:
    return to_yaml(render(silo_slots))


def main(argv: Optional[list] = None) -> None:
    """`python -m fedsim.aws.template [N]` prints the template for N silos (up to 60);
    `--nested N --out DIR` writes `server.yaml` and `silo-group.yaml` for any number."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m fedsim.aws.template", description=main.__doc__)
    parser.add_argument("silos", nargs="?", type=int, default=MAX_SILOS, help="silo slots of a single template")
    parser.add_argument("--nested", type=int, metavar="N", help="render N silo slots as nested stacks")
    parser.add_argument("--out", type=pathlib.Path, help="directory for the nested templates")
    args = parser.parse_args(argv)
    if args.nested is None:
        try:
            sys.stdout.write(render_yaml(args.silos))
        except ValueError as error:
            parser.error(str(error))
        return
    if args.out is None:
        parser.error("--nested needs --out DIR")
    try:
        server, group = render_nested(args.nested)
    except ValueError as error:
        parser.error(str(error))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "server.yaml").write_text(to_yaml(server))
    (args.out / SILO_GROUP_FILE).write_text(to_yaml(group))


if __name__ == "__main__":
    main()
