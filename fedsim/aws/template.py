"""The CloudFormation template of the serverless server, and its state machine.

`server.yaml` (shipped in this package) is rendered by `render()`; a test checks they agree, and
`python -m fedsim.aws.template > fedsim/aws/server.yaml` regenerates it. CloudFormation has no
loop that moto also accepts (`Fn::ForEach` fails there), so the template has `MAX_SILOS` silo
slots, each created when its `Silo<i>Id` parameter is set. With `LocalEmulation=true` the Lambda,
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
from typing import Any

import yaml

__all__ = ["MAX_RENDERED_SILOS", "MAX_SILOS", "render_yaml", "definition_from_template", "load_template", "render", "state_machine_definition", "template_path"]

MAX_SILOS = 10  # the slots of the shipped template; `render(silo_slots=N)` renders more
# CloudFormation's limits (200 parameters, 500 resources, 200 outputs) allow this many slots of
# this layout (2 parameters, 5 resources and 3 outputs each); beyond it, silos need nested stacks.
MAX_RENDERED_SILOS = 60
# What a silo's result record may hold (its role's PutItem is limited to these attributes).
SILO_RECORD_ATTRIBUTES = ("pk", "sk", "round_key", "received_at", "key", "sha256", "size",
                          "work_seconds", "written_at", "refused")
TOPIC_PLACEHOLDER = "${GlobalModelReadyTopic}"


def template_path() -> pathlib.Path:
    return pathlib.Path(__file__).with_name("server.yaml")


def load_template() -> dict:
    return yaml.safe_load(template_path().read_text())


def _definition(topic: str) -> dict:
    """The round loop, JSONPath only: publish with a task token, wait (deadline), continue or stop."""
    carried = ["run_id", "manifest_key", "silos", "round_deadline_seconds", "total_rounds", "stop_metric_below"]
    return {
        "Comment": "fedsim: one federated round per loop; the aggregation handler answers each round's task token",
        "StartAt": "PublishRound",
        "States": {
            "PublishRound": {
                "Type": "Task",
                "Resource": "arn:aws:states:::sns:publish.waitForTaskToken",
                "Parameters": {
                    "TopicArn": topic,
                    "Message": {
                        "run_id.$": "$.run_id",
                        "round.$": "$.round",
                        "manifest_key.$": "$.manifest_key",
                        "silos.$": "$.silos",
                        "task_token.$": "$$.Task.Token",
                    },
                },
                "TimeoutSecondsPath": "$.round_deadline_seconds",
                "ResultPath": "$.outcome",
                "Next": "ContinueOrStop",
            },
            "ContinueOrStop": {
                "Type": "Choice",
                "Choices": [
                    {
                        "And": [
                            {"Variable": "$.outcome.round", "NumericLessThanPath": "$.total_rounds"},
                            {"Variable": "$.outcome.metric", "NumericGreaterThanPath": "$.stop_metric_below"},
                        ],
                        "Next": "NextRound",
                    }
                ],
                "Default": "Done",
            },
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


def _topic_may_send_to(queue: str) -> dict:
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
                    "Condition": {"ArnEquals": {"aws:SourceArn": {"Ref": "GlobalModelReadyTopic"}}},
                }],
            },
        },
    }


def _silo_resources(index: int) -> tuple:
    silo = f"Silo{index}"
    condition = f"Has{silo}"
    silo_id = {"Ref": f"{silo}Id"}
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
        f"{silo}QueuePolicy": dict(_topic_may_send_to(f"{silo}Queue"), Condition=condition),
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
                            {"Ref": f"{silo}Principal"},
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
                                    {"Fn::Sub": "${ModelBucket.Arn}/computations/*"},
                                    {"Fn::Sub": "${ModelBucket.Arn}/runs/*/manifest.json"},
                                    {"Fn::Sub": "${ModelBucket.Arn}/runs/*/round-*/broadcast.npz"},
                                ],
                            },
                            {
                                "Sid": "WriteOwnPrefixOnly",
                                "Effect": "Allow",
                                "Action": ["s3:PutObject", "s3:GetObject"],
                                "Resource": {"Fn::Sub": ["${ModelBucket.Arn}/silos/${Id}/*", {"Id": silo_id}]},
                            },
                            {
                                "Sid": "WriteOwnResultItemsOnly",
                                "Effect": "Allow",
                                "Action": "dynamodb:PutItem",
                                "Resource": {"Fn::GetAtt": ["ResultsTable", "Arn"]},
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
    }
    resources[f"{silo}Subscription"] = {
        "Type": "AWS::SNS::Subscription",
        "Condition": condition,
        "Properties": {
            "TopicArn": {"Ref": "GlobalModelReadyTopic"},
            "Protocol": "sqs",
            "Endpoint": {"Fn::GetAtt": [f"{silo}Queue", "Arn"]},
        },
    }
    outputs = {
        f"{silo}QueueUrl": {"Condition": condition, "Value": {"Ref": f"{silo}Queue"}},
        f"{silo}RoleArn": {"Condition": condition, "Value": {"Fn::GetAtt": [f"{silo}Role", "Arn"]}},
        f"{silo}IdOut": {"Condition": condition, "Value": silo_id},
    }
    return resources, outputs


def render(silo_slots: int = MAX_SILOS) -> dict:
    """The whole template as a dict, with `silo_slots` silo slots (`server.yaml` has `MAX_SILOS`)."""
    if not isinstance(silo_slots, int) or not 1 <= silo_slots <= MAX_RENDERED_SILOS:
        raise ValueError(f"a template has 1 to {MAX_RENDERED_SILOS} silo slots (CloudFormation's limits), got {silo_slots!r}")
    parameters: dict[str, Any] = {
        "LocalEmulation": {"Type": "String", "AllowedValues": ["true", "false"], "Default": "false",
                           "Description": "true on the local stack: no Lambda, no event source mapping, no state machine"},
        "HandlerImageUri": {"Type": "String", "Default": "",
                            "Description": "ECR image with fedsim whose command is fedsim.aws.handler.handler"},
        "SiloAccountId": {"Type": "String", "Default": "", "Description": "account allowed to assume the silo roles (default: this one)"},
        "SiloVisibilityTimeout": {"Type": "Number", "Default": 900, "MinValue": 1,
                                  "Description": "seconds before an unfinished round message is redelivered to its silo"},
    }
    conditions: dict[str, Any] = {
        "IsLocal": {"Fn::Equals": [{"Ref": "LocalEmulation"}, "true"]},
        "NotLocal": {"Fn::Not": [{"Condition": "IsLocal"}]},
        "HasSiloAccount": {"Fn::Not": [{"Fn::Equals": [{"Ref": "SiloAccountId"}, ""]}]},
    }
    resources: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    for index in range(1, silo_slots + 1):
        parameters[f"Silo{index}Id"] = {"Type": "String", "Default": "", "AllowedPattern": "^[A-Za-z0-9_-]{0,64}$",
                                        "Description": f"id of silo {index} (empty: no silo in this slot)"}
        conditions[f"HasSilo{index}"] = {"Fn::Not": [{"Fn::Equals": [{"Ref": f"Silo{index}Id"}, ""]}]}
        parameters[f"Silo{index}Principal"] = {
            "Type": "String", "Default": "",
            "Description": f"the IAM principal ARN allowed to assume silo {index}'s role (default: the silo account's root)"}
        conditions[f"HasSilo{index}Principal"] = {"Fn::Not": [{"Fn::Equals": [{"Ref": f"Silo{index}Principal"}, ""]}]}
        silo_resources, silo_outputs = _silo_resources(index)
        resources.update(silo_resources)
        outputs.update(silo_outputs)

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
        "ServerQueuePolicy": _topic_may_send_to("ServerQueue"),
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
                "MaximumRetryAttempts": 3,
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


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # CloudFormation rejects YAML aliases


def render_yaml(silo_slots: int = MAX_SILOS) -> str:
    header = "# Generated by `python -m fedsim.aws.template`; edit fedsim/aws/template.py, not this file.\n"
    return header + yaml.dump(render(silo_slots), Dumper=_NoAliases, sort_keys=False, width=120)


if __name__ == "__main__":
    import sys

    sys.stdout.write(render_yaml(int(sys.argv[1]) if len(sys.argv) > 1 else MAX_SILOS))
