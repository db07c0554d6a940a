"""template.yaml grants each function exactly what its code calls (issue 13).

``broker/adapters/permissions.py`` derives, for each function, the (action, resource) pairs its
code needs (``tests/unit/test_iam.py`` holds that to the source); here each function's own role
must grant exactly those plus what Lambda does with the role (its log group, X-Ray, its SQS
event source), no more and no fewer. Resources are compared as the template writes them:
``!GetAtt X.Arn`` and ``!Ref X`` are ``X``; in a ``!Sub``, ``${X.Arn}`` is ``X``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from broker.adapters import permissions
from broker.local.template import load_template
from tests.conftest import TEMPLATE

T = load_template(TEMPLATE)
FUNCTIONS = {f.logical_id: f for f in T.of_type("AWS::Serverless::Function")}
#: Lambda's advice for SQS event sources: visibility at least six times the function timeout.
VISIBILITY_FACTOR = 6


def canonical(value: Any) -> str:
    """A policy Resource as the template names it (``RequestsTable``, ``X/index/*``, ``*``)."""
    if isinstance(value, str):
        return value
    if "Ref" in value:
        return str(value["Ref"])
    if "Fn::GetAtt" in value:
        logical_id, attribute = value["Fn::GetAtt"]
        assert attribute == "Arn", value
        return str(logical_id)
    if "Fn::Sub" in value:
        return re.sub(r"\$\{([A-Za-z0-9]+)(\.Arn)?\}", r"\1", str(value["Fn::Sub"]))
    raise AssertionError(f"unexpected resource {value!r}")


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def role_statements(function: str) -> list[dict[str, Any]]:
    role = T.resources[f"{function}Role"]
    assert role.type == "AWS::IAM::Role"
    return [
        statement
        for policy in role.properties["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
    ]


def granted(function: str) -> set[tuple[str, str]]:
    """The (action, resource) pairs the function's role allows."""
    pairs: set[tuple[str, str]] = set()
    for statement in role_statements(function):
        assert statement["Effect"] == "Allow"
        for action in as_list(statement["Action"]):
            pairs |= {(action, canonical(r)) for r in as_list(statement["Resource"])}
    return pairs


def sqs_event_queues(function: str) -> set[str]:
    events = FUNCTIONS[function].properties.get("Events") or {}
    return {
        event["Properties"]["Queue"]["Fn::GetAtt"][0]
        for event in events.values()
        if event["Type"] == "SQS"
    }


def platform(function: str) -> set[tuple[str, str]]:
    """What Lambda does with the role: logs, traces (Tracing: Active), SQS polling."""
    pairs = {(g.action, f"{function}LogGroup") for g in permissions.PLATFORM_LOGS}
    assert T.globals_function["Tracing"] == "Active"
    pairs |= {(g.action, "*") for g in permissions.PLATFORM_TRACING}
    for queue in sqs_event_queues(function):
        pairs |= {(g.action, queue) for g in permissions.PLATFORM_SQS_EVENT}
    return pairs


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_each_role_grants_exactly_what_its_code_and_lambda_use(function: str) -> None:
    # GIVEN what the function's code calls (derived) and what Lambda does with its role
    needed = permissions.required(function) | platform(function)
    # WHEN its role's statements are read
    allowed = granted(function)
    # THEN they are the same: a missing grant breaks a call, an extra one is unused privilege
    assert allowed - needed == set(), "granted, never used"
    assert needed - allowed == set(), "used, not granted"


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_each_function_runs_with_its_own_role_and_log_group_only(function: str) -> None:
    props = FUNCTIONS[function].properties
    # THEN its role is the template's role of its name, not SAM's generated one (which would
    # add managed policies: SQS polling and logs on every resource of the account)
    assert props["Role"] == {"Fn::GetAtt": [f"{function}Role", "Arn"]}
    assert "Policies" not in props
    assert props["LoggingConfig"] == {"LogGroup": {"Ref": f"{function}LogGroup"}}
    # AND the only managed policy of any role is ParallelCluster's, on the cluster worker
    managed = T.resources[f"{function}Role"].properties.get("ManagedPolicyArns")
    if function == "ClusterWorkerFunction":
        assert managed == {
            "Fn::If": [
                "HasParallelClusterPolicy",
                [{"Ref": "ParallelClusterPolicyArn"}],
                {"Ref": "AWS::NoValue"},
            ]
        }
    else:
        assert managed is None


def test_removing_a_grant_is_noticed() -> None:
    # GIVEN the job worker's grants without ssm:CancelCommand
    needed = permissions.required("JobWorkerFunction") | platform("JobWorkerFunction")
    allowed = granted("JobWorkerFunction") - {("ssm:CancelCommand", "*")}
    # THEN the comparison finds it missing
    assert needed - allowed == {("ssm:CancelCommand", "*")}


def send_command_statements(function: str) -> list[dict[str, Any]]:
    return [s for s in role_statements(function) if s["Action"] == "ssm:SendCommand"]


@pytest.mark.parametrize("function", ["JobWorkerFunction", "SweeperFunction"])
def test_commands_go_only_to_managed_head_nodes_with_the_shell_document(function: str) -> None:
    # GIVEN the function's SendCommand statements
    statements = send_command_statements(function)
    by_resource = {canonical(s["Resource"]): s for s in statements}
    instance = by_resource.pop(
        "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:instance/*"
    )
    # THEN on instances: only ParallelCluster head nodes whose cluster name and CloudFormation
    # stack (a tag only CloudFormation sets) both match ManagedClusterNames
    assert instance["Condition"] == {
        "StringEquals": {"aws:ResourceTag/parallelcluster:node-type": "HeadNode"},
        "StringLike": {
            "aws:ResourceTag/parallelcluster:cluster-name": {"Ref": "ManagedClusterNames"},
            "aws:ResourceTag/aws:cloudformation:stack-name": {"Ref": "ManagedClusterNames"},
        },
    }
    # AND the only other resource is the stock shell document, unconditionally
    (document,) = by_resource.values()
    assert canonical(document["Resource"]) == (
        "arn:${AWS::Partition}:ssm:${AWS::Region}::document/AWS-RunShellScript"
    )
    assert "Condition" not in document


def test_wildcard_resources_are_only_actions_aws_cannot_scope() -> None:
    # GIVEN every Allow statement of every role
    wildcards = {
        action
        for function in FUNCTIONS
        for statement in role_statements(function)
        for action in as_list(statement["Action"])
        if "*" in as_list(statement["Resource"])
    }
    # THEN a "*" resource goes only with actions AWS authorizes on no resource
    assert wildcards == {
        "ec2:DescribeInstances",
        "ssm:GetCommandInvocation",
        "ssm:CancelCommand",
        "xray:PutTraceSegments",
        "xray:PutTelemetryRecords",
    }


def senders(resource: str, action: str) -> set[str]:
    """The functions whose code needs ``action`` on ``resource``."""
    return {f for f in FUNCTIONS if (action, resource) in permissions.required(f)}


def deny_statement(policy_type: str, sid: str) -> dict[str, Any]:
    (statement,) = [
        s
        for policy in T.of_type(policy_type)
        for s in policy.properties["PolicyDocument"]["Statement"]
        if s.get("Sid") == sid
    ]
    return statement


@pytest.mark.parametrize(
    ("sid", "queue"),
    [("OnlyTheBrokerSendsRequests", "RequestsQueue"),
     ("OnlyTheBrokerSendsClusterOperations", "ClusterQueue")],
)  # fmt: skip
def test_only_the_functions_that_send_to_a_work_queue_may(sid: str, queue: str) -> None:
    # GIVEN the queue policy's deny for the queue
    deny = deny_statement("AWS::SQS::QueuePolicy", sid)
    assert (deny["Effect"], deny["Principal"], deny["Action"]) == ("Deny", "*", "sqs:SendMessage")
    assert canonical(deny["Resource"]) == queue
    # THEN its exceptions are exactly the roles of the functions whose code sends there
    allowed = deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]
    assert {canonical(a) for a in allowed} == {
        f"{f}Role" for f in senders(queue, "sqs:SendMessage")
    }


def test_only_the_functions_that_stage_objects_may_write_to_the_bucket() -> None:
    deny = deny_statement("AWS::S3::BucketPolicy", "OnlyTheBrokerWrites")
    assert (deny["Effect"], deny["Action"]) == ("Deny", "s3:PutObject")
    writers = {
        f
        for f in FUNCTIONS
        for action, resource in permissions.required(f)
        if action == "s3:PutObject" and resource.startswith("StagingBucket/")
    }
    allowed = deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]
    assert {canonical(a) for a in allowed} == {f"{f}Role" for f in writers}


def test_queue_visibility_is_at_least_six_times_its_consumers_timeout() -> None:
    default = int(T.globals_function["Timeout"])
    checked = set()
    for function, resource in FUNCTIONS.items():
        timeout = int(resource.properties.get("Timeout", default))
        for queue in sqs_event_queues(function):
            # GIVEN a queue a function drains
            visibility = int(T.resources[queue].properties["VisibilityTimeout"])
            # THEN a message stays hidden for at least six of its invocations' timeouts
            assert visibility >= VISIBILITY_FACTOR * timeout, (queue, function)
            checked.add(queue)
    assert checked == {q.logical_id for q in T.of_type("AWS::SQS::Queue")}


def test_the_runtime_is_set_once_in_globals() -> None:
    assert T.globals_function["Runtime"] == "python3.12"
    assert not [f for f, r in FUNCTIONS.items() if "Runtime" in r.properties]


def test_the_api_admits_the_account_or_one_vpc_endpoint_throttles_and_logs_each_request() -> None:
    (api,) = T.of_type("AWS::Serverless::Api")
    props = api.properties
    # THEN its resource policy admits this account's principals, or only the VPC endpoint
    (statement,) = props["Auth"]["ResourcePolicy"]["CustomStatements"]
    assert statement["Action"] == "execute-api:Invoke"
    assert statement["Condition"] == {
        "Fn::If": [
            "HasApiVpcEndpoint",
            {"StringEquals": {"aws:SourceVpce": {"Ref": "ApiVpcEndpointId"}}},
            {"StringEquals": {"aws:PrincipalAccount": {"Ref": "AWS::AccountId"}}},
        ]
    }
    assert props["Auth"]["DefaultAuthorizer"] == "AWS_IAM"
    # AND the stage is throttled by parameters
    (method,) = props["MethodSettings"]
    assert method["ThrottlingRateLimit"] == {"Ref": "ApiThrottleRateLimit"}
    assert method["ThrottlingBurstLimit"] == {"Ref": "ApiThrottleBurstLimit"}
    # AND each call is one JSON access-log line carrying API Gateway's request id
    access = props["AccessLogSetting"]
    assert canonical(access["DestinationArn"]) == "ApiAccessLogGroup"
    line = json.loads(access["Format"])
    assert line["requestId"] == "$context.requestId"
    assert line["caller"] == "$context.identity.userArn"


def test_the_outputs_give_the_cli_and_the_operator_what_they_need() -> None:
    outputs = T.document["Outputs"]
    assert {"ApiUrl", "Region", "NotificationsTopicArn", "AlarmsTopicArn"} <= set(outputs)
    assert outputs["ApiUrl"]["Value"]["Fn::Sub"].endswith("/${StageName}/v1")
