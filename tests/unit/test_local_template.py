"""broker.local.template: short-form tags, intrinsic resolution, and what the local stack reads
from the real template.yaml (no network). Schedule expressions and schedule events:
test_local_schedule_expressions.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.local.provision import provision_order
from broker.local.template import (
    FunctionDef,
    PhysicalResource,
    Resolver,
    Template,
    TemplateError,
    load_template,
    load_yaml,
    local_api_id,
    read_functions,
    template_from_document,
)

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
ACCOUNT = "123456789012"
ENDPOINT = "http://127.0.0.1:5000"


def _queue(logical_id: str) -> PhysicalResource:
    name = f"hpcb-local-{logical_id}"
    url = f"{ENDPOINT}/{ACCOUNT}/{name}"
    arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"
    return PhysicalResource(
        logical_id, "AWS::SQS::Queue", url, {"Arn": arn, "QueueName": name, "QueueUrl": url}
    )


_SECRET_ARN = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:hpcb-local-PageTokenSecret-AbCdEf"
FAKE_PHYSICAL = {
    "RequestsQueue": _queue("RequestsQueue"),
    "RequestsDLQ": _queue("RequestsDLQ"),
    "ClusterQueue": _queue("ClusterQueue"),
    "ClusterDLQ": _queue("ClusterDLQ"),
    "RequestsTable": PhysicalResource(
        "RequestsTable",
        "AWS::DynamoDB::Table",
        "hpcb-local-RequestsTable",
        {"Arn": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/hpcb-local-RequestsTable"},
    ),
    "IdempotencyTable": PhysicalResource(
        "IdempotencyTable",
        "AWS::DynamoDB::Table",
        "hpcb-local-IdempotencyTable",
        {"Arn": f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/hpcb-local-IdempotencyTable"},
    ),
    "StagingBucket": PhysicalResource(
        "StagingBucket",
        "AWS::S3::Bucket",
        "hpcb-local-stagingbucket",
        {"Arn": "arn:aws:s3:::hpcb-local-stagingbucket"},
    ),
    "NotificationsTopic": PhysicalResource(
        "NotificationsTopic",
        "AWS::SNS::Topic",
        f"arn:aws:sns:{REGION}:{ACCOUNT}:hpcb-local-NotificationsTopic",
        {
            "TopicArn": f"arn:aws:sns:{REGION}:{ACCOUNT}:hpcb-local-NotificationsTopic",
            "TopicName": "hpcb-local-NotificationsTopic",
        },
    ),
    "PageTokenSecret": PhysicalResource(
        "PageTokenSecret",
        "AWS::SecretsManager::Secret",
        _SECRET_ARN,
        {"Id": _SECRET_ARN},
    ),
}


@pytest.fixture(scope="module")
def template() -> Template:
    return load_template(ROOT / "template.yaml")


@pytest.fixture
def resolver(template: Template) -> Resolver:
    return Resolver(template, region=REGION, account_id=ACCOUNT, physical=FAKE_PHYSICAL)


@pytest.fixture
def functions(template: Template, resolver: Resolver) -> dict[str, FunctionDef]:
    return {f.logical_id: f for f in read_functions(template, resolver)}


def _tiny(resources: dict[str, object], **sections: object) -> Template:
    return template_from_document({"Resources": resources, **sections})


# -- loading ----------------------------------------------------------------------------------


def test_short_form_tags_load_as_their_long_form() -> None:
    # GIVEN YAML using every short-form intrinsic tag
    text = """
    a: !Ref Thing
    b: !Sub "x-${AWS::Region}"
    c: !Join [",", [a, b]]
    d: !If [IsProd, 1, 2]
    e: !Select [0, !Split [",", "a,b"]]
    f: !FindInMap [M, K1, K2]
    g: !Equals [a, b]
    h: !Not [!Condition C]
    i: !And [!Condition C, !Condition D]
    j: !Or [!Condition C, !Condition D]
    k: !Base64 text
    l: !ImportValue Exported
    m: !GetAZs ""
    """

    # WHEN it is loaded
    doc = load_yaml(text)

    # THEN each tag became the long-form dict CloudFormation documents
    assert doc == {
        "a": {"Ref": "Thing"},
        "b": {"Fn::Sub": "x-${AWS::Region}"},
        "c": {"Fn::Join": [",", ["a", "b"]]},
        "d": {"Fn::If": ["IsProd", 1, 2]},
        "e": {"Fn::Select": [0, {"Fn::Split": [",", "a,b"]}]},
        "f": {"Fn::FindInMap": ["M", "K1", "K2"]},
        "g": {"Fn::Equals": ["a", "b"]},
        "h": {"Fn::Not": [{"Condition": "C"}]},
        "i": {"Fn::And": [{"Condition": "C"}, {"Condition": "D"}]},
        "j": {"Fn::Or": [{"Condition": "C"}, {"Condition": "D"}]},
        "k": {"Fn::Base64": "text"},
        "l": {"Fn::ImportValue": "Exported"},
        "m": {"Fn::GetAZs": ""},
    }


def test_getatt_dotted_form_splits_on_the_first_dot_only() -> None:
    # GIVEN the dotted !GetAtt form, with an attribute that itself contains a dot
    text = "a: !GetAtt Queue.Arn\nb: !GetAtt Db.Endpoint.Address"

    # WHEN it is loaded
    doc = load_yaml(text)

    # THEN resource and attribute are split at the first dot
    assert doc == {
        "a": {"Fn::GetAtt": ["Queue", "Arn"]},
        "b": {"Fn::GetAtt": ["Db", "Endpoint.Address"]},
    }


def test_getatt_list_form_is_kept_as_a_list() -> None:
    # GIVEN the list form of !GetAtt
    # WHEN it is loaded
    doc = load_yaml("a: !GetAtt [Queue, QueueName]")

    # THEN it is the same long form as the dotted one
    assert doc == {"a": {"Fn::GetAtt": ["Queue", "QueueName"]}}


# -- resolution -------------------------------------------------------------------------------


def test_sub_resolves_pseudo_parameters_and_parameter_defaults(resolver: Resolver) -> None:
    # GIVEN a !Sub using pseudo parameters, a parameter default and a REST API id
    value = {
        "Fn::Sub": "https://${BrokerApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}"
        "/${StageName}/${AWS::AccountId}/${AWS::Partition}"
    }

    # WHEN it is resolved
    resolved = resolver.resolve(value)

    # THEN every variable is replaced; the API id is the stable local one
    api_id = local_api_id("BrokerApi")
    assert resolved == f"https://{api_id}.execute-api.us-east-1.amazonaws.com/api/{ACCOUNT}/aws"


def test_sub_list_form_uses_its_variables_and_keeps_escaped_literals(resolver: Resolver) -> None:
    # GIVEN the list form of !Sub with its own variable and a ${!Literal}
    value = {"Fn::Sub": ["${Name}-${!Literal}-${RequestsQueue.QueueName}", {"Name": "n"}]}

    # WHEN it is resolved
    resolved = resolver.resolve(value)

    # THEN the variable map wins, the escape stays literal, dotted names are GetAtt
    assert resolved == "n-${Literal}-hpcb-local-RequestsQueue"


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ({"Ref": "RequestsQueue"}, f"{ENDPOINT}/{ACCOUNT}/hpcb-local-RequestsQueue"),
        (
            {"Fn::GetAtt": ["RequestsQueue", "Arn"]},
            f"arn:aws:sqs:{REGION}:{ACCOUNT}:hpcb-local-RequestsQueue",
        ),
        ({"Fn::GetAtt": ["RequestsQueue", "QueueName"]}, "hpcb-local-RequestsQueue"),
        ({"Ref": "RequestsTable"}, "hpcb-local-RequestsTable"),
        ({"Ref": "StagingBucket"}, "hpcb-local-stagingbucket"),
        ({"Ref": "BrokerApi"}, local_api_id("BrokerApi")),
    ],
)
def test_resource_references_resolve_to_physical_ids(
    resolver: Resolver, expression: dict[str, object], expected: str
) -> None:
    # GIVEN provisioned resources (queue URL, table and bucket names)
    # WHEN a Ref/GetAtt to one is resolved
    # THEN it yields what CloudFormation would (queue Ref = URL, GetAtt Arn = ARN, ...)
    assert resolver.resolve(expression) == expected


def test_reference_to_an_unprovisioned_resource_is_an_error(template: Template) -> None:
    # GIVEN a resolver that knows no physical resources
    resolver = Resolver(template, region=REGION, account_id=ACCOUNT)

    # WHEN a queue is referenced THEN the error names it
    with pytest.raises(TemplateError, match="RequestsQueue"):
        resolver.resolve({"Ref": "RequestsQueue"})


def test_parameter_override_wins_over_the_default(template: Template) -> None:
    # GIVEN an override of MaxReceiveCount
    resolver = Resolver(
        template, region=REGION, account_id=ACCOUNT, parameter_overrides={"MaxReceiveCount": "2"}
    )

    # WHEN the parameter is referenced THEN the override is used (as a string, like CFN)
    assert resolver.resolve({"Ref": "MaxReceiveCount"}) == "2"


def test_override_of_an_unknown_parameter_is_rejected(template: Template) -> None:
    # GIVEN / WHEN an override names no parameter of the template THEN it is refused
    with pytest.raises(TemplateError, match="Nope"):
        Resolver(template, region=REGION, account_id=ACCOUNT, parameter_overrides={"Nope": "1"})


def test_if_follows_the_named_condition() -> None:
    # GIVEN a condition on a parameter, and a value chosen by it
    tpl = _tiny(
        {"Q": {"Type": "AWS::SQS::Queue"}},
        Parameters={"Env": {"Type": "String", "Default": "prod"}},
        Conditions={"IsProd": {"Fn::Equals": [{"Ref": "Env"}, "prod"]}},
    )
    value = {"Fn::If": ["IsProd", "big", {"Ref": "AWS::NoValue"}]}

    # WHEN resolved for each parameter value
    prod = Resolver(tpl, region=REGION, account_id=ACCOUNT).resolve({"v": value})
    dev = Resolver(
        tpl, region=REGION, account_id=ACCOUNT, parameter_overrides={"Env": "dev"}
    ).resolve({"v": value})

    # THEN the true branch is taken, and AWS::NoValue removes the property
    assert prod == {"v": "big"}
    assert dev == {}


def test_import_value_cannot_be_resolved_locally(resolver: Resolver) -> None:
    # GIVEN / WHEN an import from another stack is resolved THEN it is an explicit error
    with pytest.raises(TemplateError, match="ImportValue"):
        resolver.resolve({"Fn::ImportValue": "OtherStack-Thing"})


# -- the real template.yaml ---------------------------------------------------------------------


def test_job_worker_drains_the_requests_queue_with_partial_batch_failures(
    functions: dict[str, FunctionDef],
) -> None:
    # GIVEN the functions read from template.yaml
    worker = functions["JobWorkerFunction"]

    # WHEN / THEN the job worker has exactly one SQS mapping: the requests queue, batch 10,
    # a 1 s batching window and ReportBatchItemFailures
    assert worker.handler == "workers.job_worker.lambda_handler"
    assert [(e.queue_logical_id, e.batch_size) for e in worker.sqs_events] == [
        ("RequestsQueue", 50)
    ]
    assert worker.sqs_events[0].report_batch_item_failures is True
    assert worker.sqs_events[0].batching_window_s == 1.0
    assert worker.timeout == 150
    # AND at most JobWorkerMaxConcurrency (default 5) invocations at once
    assert worker.sqs_events[0].max_concurrency == 5


def test_dlq_worker_drains_the_dead_letter_queue(functions: dict[str, FunctionDef]) -> None:
    # GIVEN / WHEN the functions are read
    dlq = functions["DlqWorkerFunction"]

    # THEN the DLQ worker is mapped to RequestsDLQ with partial batch failures
    assert [(e.queue_logical_id, e.report_batch_item_failures) for e in dlq.sqs_events] == [
        ("RequestsDLQ", True)
    ]


def test_api_function_serves_any_method_on_the_greedy_proxy(
    functions: dict[str, FunctionDef],
) -> None:
    # GIVEN / WHEN the functions are read
    api = functions["ApiFunction"]

    # THEN the API function has one Api event, ANY /{proxy+}, on BrokerApi, and no SQS event
    assert [(e.path, e.method, e.rest_api_logical_id) for e in api.api_events] == [
        ("/{proxy+}", "ANY", "BrokerApi")
    ]
    assert api.sqs_events == []


def test_function_environment_merges_globals_with_its_own_resolved(
    functions: dict[str, FunctionDef],
) -> None:
    # GIVEN / WHEN the functions are read
    env = functions["ApiFunction"].environment

    # THEN globals and the function's own variables are merged, intrinsics resolved
    assert env["HPCB_TABLE_NAME"] == "hpcb-local-RequestsTable"
    assert env["HPCB_QUEUE_URL"] == f"{ENDPOINT}/{ACCOUNT}/hpcb-local-RequestsQueue"
    assert env["POWERTOOLS_LOG_LEVEL"] == "INFO"
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == "HpcBroker"
    assert functions["JobWorkerFunction"].environment["HPCB_STAGING_BUCKET"] == (
        "hpcb-local-stagingbucket"
    )


def test_requests_queue_redrive_policy_targets_the_dlq(
    template: Template, resolver: Resolver
) -> None:
    # GIVEN the requests queue of template.yaml
    properties = template.resources["RequestsQueue"].properties

    # WHEN its RedrivePolicy is resolved
    redrive = resolver.resolve(properties["RedrivePolicy"])

    # THEN it names the DLQ's ARN and the MaxReceiveCount default
    assert redrive == {
        "deadLetterTargetArn": FAKE_PHYSICAL["RequestsDLQ"].attributes["Arn"],
        "maxReceiveCount": "8",
    }


def test_provision_order_creates_the_dlq_before_the_queue_that_names_it(
    template: Template,
) -> None:
    # GIVEN template.yaml, where RequestsQueue's redrive policy references RequestsDLQ
    resolver = Resolver(template, region=REGION, account_id=ACCOUNT)

    # WHEN the provisioning order is computed
    order = [r.logical_id for r in provision_order(template, resolver)]

    # THEN the DLQ comes first, and only provisionable types are listed
    assert order.index("RequestsDLQ") < order.index("RequestsQueue")
    assert set(order) == {
        "RequestsQueue",
        "RequestsDLQ",
        "ClusterQueue",
        "ClusterDLQ",
        "RequestsTable",
        "IdempotencyTable",
        "StagingBucket",
        "NotificationsTopic",
        "AlarmsTopic",
        "PageTokenSecret",
    }


def test_sweeper_runs_on_a_one_minute_eventbridge_rule(functions: dict[str, FunctionDef]) -> None:
    # GIVEN / WHEN the functions of template.yaml are read
    sweeper = functions["SweeperFunction"]

    # THEN the sweeper has one enabled Schedule event, rate(1 minute) = 60 s, on a local rule
    (sweep,) = sweeper.schedule_events
    assert sweeper.handler == "workers.sweeper.lambda_handler"
    assert (sweep.name, sweep.type, sweep.enabled) == ("Sweep", "Schedule", True)
    assert sweep.expression.kind == "rate"
    assert sweep.expression.period_s == 60.0
    assert sweep.rule_arn == (
        f"arn:aws:events:{REGION}:{ACCOUNT}:rule/hpcb-local-SweeperFunctionSweep"
    )
    assert sweeper.sqs_events == []
    assert sweeper.api_events == []


def test_the_sweeper_may_send_to_the_requests_queue_and_nothing_more(
    template: Template, functions: dict[str, FunctionDef]
) -> None:
    # GIVEN / WHEN the sweeper of template.yaml is read
    env = functions["SweeperFunction"].environment
    # (its own role, issue 13: SAM's generated role would add SQS rights on every queue)
    assert "Policies" not in template.resources["SweeperFunction"].properties
    policies = template.resources["SweeperFunctionRole"].properties["Policies"]
    statements = [s for p in policies for s in p["PolicyDocument"]["Statement"]]
    # THEN it has the API's queue URL (it re-sends lost messages; one value in the local stack)
    assert env["HPCB_QUEUE_URL"] == functions["ApiFunction"].environment["HPCB_QUEUE_URL"]
    # AND its only SQS right is SendMessage on the requests queue
    assert [s for s in statements if "sqs" in str(s["Action"])] == [
        {"Sid": "Requeue", "Effect": "Allow", "Action": "sqs:SendMessage",
         "Resource": {"Fn::GetAtt": ["RequestsQueue", "Arn"]}}
    ]  # fmt: skip
    assert "ManagedPolicyArns" not in template.resources["SweeperFunctionRole"].properties


def test_functions_publish_to_the_provisioned_topic(functions: dict[str, FunctionDef]) -> None:
    # GIVEN / WHEN the functions are read
    # THEN the global HPCB_TOPIC_ARN resolves to the topic's ARN for every function
    arn = FAKE_PHYSICAL["NotificationsTopic"].ref
    assert {f.environment["HPCB_TOPIC_ARN"] for f in functions.values()} == {arn}
