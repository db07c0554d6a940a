"""template.yaml: transport and operations (issue 13). Every queue and the staging bucket refuse
calls without TLS; the alarms an operator needs exist and page the alarms topic."""

from __future__ import annotations

from typing import Any

from broker.local.template import load_template
from tests.conftest import TEMPLATE

T = load_template(TEMPLATE)


def tls_denies(policy_type: str) -> list[dict[str, Any]]:
    return [
        statement
        for policy in T.of_type(policy_type)
        for statement in policy.properties["PolicyDocument"]["Statement"]
        if statement.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
        and statement["Effect"] == "Deny"
    ]


def test_every_queue_refuses_calls_without_tls() -> None:
    queues = {q.logical_id for q in T.of_type("AWS::SQS::Queue")}
    (deny,) = tls_denies("AWS::SQS::QueuePolicy")
    assert deny["Action"] == "sqs:*"
    assert {r["Fn::GetAtt"][0] for r in deny["Resource"]} == queues


def test_the_staging_bucket_refuses_calls_without_tls() -> None:
    (deny,) = tls_denies("AWS::S3::BucketPolicy")
    assert deny["Action"] == "s3:*"
    assert len(deny["Resource"]) == 2  # the bucket and its objects


def alarm(metric: str, target: str) -> dict[str, Any]:
    """The one alarm on ``metric`` whose dimension names ``target`` (a logical id)."""
    found = [
        a.properties for a in T.of_type("AWS::CloudWatch::Alarm")
        if a.properties["MetricName"] == metric and target in str(a.properties["Dimensions"])
    ]  # fmt: skip
    assert len(found) == 1, (metric, target, found)
    return found[0]


def test_the_operator_is_paged_for_dead_letters_errors_throttles_backlog_and_a_stopped_sweep() -> (
    None
):
    pages = [
        alarm("ApproximateNumberOfMessagesVisible", "RequestsDLQ"),
        alarm("ApproximateNumberOfMessagesVisible", "ClusterDLQ"),
        alarm("Errors", "JobWorkerFunction"),
        alarm("Throttles", "JobWorkerFunction"),
        alarm("ApproximateAgeOfOldestMessage", "RequestsQueue"),
        alarm("Invocations", "SweeperFunction"),
    ]
    assert all(p["AlarmActions"] == [{"Ref": "AlarmsTopic"}] for p in pages)
    # a sweep that stopped has no data points: that must page too
    assert pages[-1]["TreatMissingData"] == "breaching"
    assert pages[-1]["ComparisonOperator"] == "LessThanThreshold"


def test_the_alarms_topic_is_not_encrypted_with_a_key_cloudwatch_cannot_use() -> None:
    # GIVEN the alarms topic (CloudWatch cannot publish to one encrypted with aws/sns, whose key
    # policy does not admit it: no alarm would ever arrive)
    topic = T.resources["AlarmsTopic"].properties
    # THEN it is encrypted only with the operator's own key, when one is given
    assert topic["KmsMasterKeyId"] == {
        "Fn::If": [
            "HasAlarmsTopicKey",
            {"Ref": "AlarmsTopicKmsKeyId"},
            {"Ref": "AWS::NoValue"},
        ]
    }
    assert "aws/sns" not in str(T.document["Parameters"]["AlarmsTopicKmsKeyId"]["Default"])
