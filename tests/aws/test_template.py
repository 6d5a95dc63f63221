"""The CloudFormation template: cfn-lint, generated from its source, least privilege, JSONPath only."""

import json
import pathlib
import subprocess
import sys

import pytest

from fedsim.aws import template


def test_templates_pass_cfn_lint(tmp_path):
    """The shipped template, those rendered for 3 and 60 silos, and the nested pair for 200, in one cfn-lint run."""
    for slots in (3, template.MAX_RENDERED_SILOS):
        (tmp_path / f"server-{slots}.yaml").write_text(template.render_yaml(slots))
    template.main(["--nested", "200", "--out", str(tmp_path / "nested")])
    files = [str(template.template_path()), "server-3.yaml", "server-60.yaml", "nested/server.yaml", f"nested/{template.SILO_GROUP_FILE}"]
    cfn_lint = pathlib.Path(sys.executable).with_name("cfn-lint")
    completed = subprocess.run([str(cfn_lint), *files], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_shipped_template_is_the_rendered_one():
    assert template.template_path().read_text() == template.render_yaml()


def test_each_silo_role_is_least_privilege():
    resources = template.load_template()["Resources"]
    statements = {s["Sid"]: s for s in resources["Silo2Role"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]}
    assert statements["OwnQueueOnly"]["Resource"] == {"Fn::GetAtt": ["Silo2Queue", "Arn"]}
    assert statements["WriteOwnPrefixOnly"]["Resource"] == {"Fn::Sub": ["${ModelBucket.Arn}/silos/${Id}/*", {"Id": {"Ref": "Silo2Id"}}]}
    assert statements["WriteOwnResultItemsOnly"]["Action"] == "dynamodb:PutItem"
    assert statements["WriteOwnResultItemsOnly"]["Condition"] == {"ForAllValues:StringEquals": {
        "dynamodb:LeadingKeys": [{"Ref": "Silo2Id"}], "dynamodb:Attributes": list(template.SILO_RECORD_ATTRIBUTES)}}
    assert "status" not in template.SILO_RECORD_ATTRIBUTES and "task_token" not in template.SILO_RECORD_ATTRIBUTES
    server = resources["ServerSubscription"]["Properties"]  # the server's copy of the round messages (task tokens)
    assert server["TopicArn"] == {"Ref": "GlobalModelReadyTopic"} and server["Endpoint"] == {"Fn::GetAtt": ["ServerQueue", "Arn"]}
    handler_statements = resources["AggregationRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    assert {"Effect": "Allow", "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage"],
            "Resource": {"Fn::GetAtt": ["ServerQueue", "Arn"]}} in handler_statements
    assert "ServerQueue" not in json.dumps(statements)  # no silo reads it
    reads = json.dumps(statements["ReadRoundObjects"]["Resource"])
    assert "manifest.json" in reads and "broadcast.npz" in reads and '/runs/*"' not in reads  # no carry, no results
    trust = resources["Silo2Role"]["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"]["AWS"]["Fn::If"]
    assert trust[0] == "HasSilo2Principal" and trust[1] == {"Ref": "Silo2Principal"}  # each slot its own principal
    actions = [a for s in statements.values() for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])]
    assert not any(a.endswith("*") for a in actions)
    assert "s3:PutObject" not in json.dumps(statements["ReadRoundObjects"])
    assert resources["Silo2Queue"]["Properties"]["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["Silo2DeadLetterQueue", "Arn"]}
    bucket = resources["ModelBucket"]["Properties"]
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"} and "BucketEncryption" in bucket
    assert resources["ResultsTable"]["Properties"]["StreamSpecification"] == {"StreamViewType": "NEW_IMAGE"}
    for local_only_out in ("AggregationFunction", "AggregationEventSourceMapping", "RoundStateMachine"):
        assert resources[local_only_out]["Condition"] == "NotLocal"


def test_state_machine_is_jsonpath_and_carries_no_model_bytes():
    definition = json.loads(template.state_machine_definition("arn:aws:sns:us-east-1:1:t"))
    text = json.dumps(definition)
    assert "JSONata" not in text and '"Assign"' not in text and "QueryLanguage" not in text
    publish = definition["States"]["PublishRound"]
    assert publish["Resource"] == "arn:aws:states:::sns:publish.waitForTaskToken"
    assert publish["TimeoutSecondsPath"] == "$.round_deadline_seconds"
    assert sorted(publish["Parameters"]["Message"]) == ["manifest_key.$", "round.$", "run_id.$", "silos.$", "task_token.$"]
    choice = definition["States"]["AfterRound"]["Choices"]
    assert choice == [{"Variable": "$.outcome.evaluate", "BooleanEquals": True, "Next": "PublishEvaluation"},
                      {"Variable": "$.outcome.continue", "BooleanEquals": True, "Next": "NextRound"}]
    # The template embeds the same definition.
    embedded = template.definition_from_template(template.load_template(), "arn:aws:sns:us-east-1:1:t")
    assert json.loads(embedded) == definition


def test_rendered_for_more_silos_within_cloudformation_limits():
    for slots in (3, template.MAX_RENDERED_SILOS):
        rendered = template.render(slots)
        assert len(rendered["Parameters"]) <= 200 and len(rendered["Resources"]) <= 500 and len(rendered["Outputs"]) <= 200
        assert f"Silo{slots}Role" in rendered["Resources"] and f"Silo{slots + 1}Role" not in rendered["Resources"]
    with pytest.raises(ValueError, match="CloudFormation's limits"):
        template.render(template.MAX_RENDERED_SILOS + 1)


def test_two_hundred_silos_as_nested_stacks():
    server, group = template.render_nested(200)
    for document in (server, group):
        assert len(document["Parameters"]) <= 200 and len(document["Resources"]) <= 500 and len(document["Outputs"]) <= 200
    stacks = [name for name, r in server["Resources"].items() if r["Type"] == "AWS::CloudFormation::Stack"]
    assert stacks == [f"SiloGroup{g}Stack" for g in range(1, 5)]  # 4 groups of 50 slots
    assert sum(1 for name in group["Resources"] if name.endswith("Role")) == template.SILO_GROUP_SIZE
    # A group's slot is the flat template's slot with the server's pieces passed in as parameters.
    flat = json.dumps(template.render(1)["Resources"]["Silo1Role"], sort_keys=True)
    nested = json.dumps(group["Resources"]["Slot0Role"], sort_keys=True)
    replacements = {  # in this order
        '{"Ref": "Silo1Principal"}': '{"Fn::Select": [0, {"Ref": "SiloPrincipals"}]}',
        '{"Ref": "Silo1Id"}': '{"Fn::Select": [0, {"Ref": "SiloIds"}]}',
        "${ModelBucket.Arn}": "${BucketArn}", '{"Fn::GetAtt": ["ResultsTable", "Arn"]}': '{"Ref": "TableArn"}',
        '"Silo1': '"Slot0', '"HasSilo1': '"HasSlot0',
    }
    for old, new in replacements.items():
        flat = flat.replace(old, new)
    assert flat == nested
    values = template.silo_group_parameters([f"s{i}" for i in range(120)])
    assert sorted(values) == ["SiloGroup1Ids", "SiloGroup1Principals", "SiloGroup2Ids", "SiloGroup2Principals",
                              "SiloGroup3Ids", "SiloGroup3Principals"]
    assert values["SiloGroup3Ids"].split(",") == [f"s{i}" for i in range(100, 120)]
