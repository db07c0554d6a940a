"""broker.local.notifications through LocalStack: the local inbox queue is subscribed to the
template's SNS topic (envelope delivery), so what is published there can be read back with its
message attributes, by :func:`drain` and by ``python -m broker.local notifications``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from broker.local import __main__ as cli
from broker.local.notifications import NotificationError, drain, parse_notification
from broker.local.stack import LocalStack
from broker.local.template import LocalStackError

TEST_TEMPLATE = Path(__file__).resolve().parent / "local_stack_template.yaml"


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack(TEST_TEMPLATE, access_log=False, schedules_enabled=False) as running:
        yield running


@pytest.fixture(scope="module")
def sqs(stack: LocalStack) -> Any:
    return boto3.client("sqs", endpoint_url=stack.moto_url, region_name=stack.region)


@pytest.fixture(scope="module")
def sns(stack: LocalStack) -> Any:
    return boto3.client("sns", endpoint_url=stack.moto_url, region_name=stack.region)


@pytest.fixture
def inbox(stack: LocalStack, sqs: Any) -> str:
    """The inbox URL, emptied before the test."""
    url = stack.notifications_queue_url
    drain(sqs, url)
    return url


def _publish_job_event(sns: Any, topic_arn: str, job: str) -> str:
    response = sns.publish(
        TopicArn=topic_arn,
        Subject="job state",
        Message=json.dumps({"job_id": job, "state": "COMPLETED"}),
        MessageAttributes={
            "type": {"DataType": "String", "StringValue": "job.state"},
            "cluster": {"DataType": "String", "StringValue": "local"},
            "exit_code": {"DataType": "Number", "StringValue": "0"},
        },
    )
    return str(response["MessageId"])


def test_a_published_message_reaches_the_inbox_with_its_attributes(
    stack: LocalStack, sns: Any, sqs: Any, inbox: str
) -> None:
    # GIVEN the template's topic, and the inbox subscribed to it
    topic = stack.topic_arns["Topic"]

    # WHEN a message with attributes is published to the topic
    message_id = _publish_job_event(sns, topic, "j-1")

    # THEN the inbox has it as a real SQS subscriber sees it (envelope, not raw): drain parses
    # the envelope, the JSON message and the typed attributes
    (notification,) = drain(sqs, inbox, wait_s=5)
    assert notification.message_id == message_id
    assert notification.topic_arn == topic
    assert notification.subject == "job state"
    assert notification.message == {"job_id": "j-1", "state": "COMPLETED"}
    assert notification.message_attributes == {
        "type": "job.state",
        "cluster": "local",
        "exit_code": 0,
    }
    assert notification.timestamp.endswith("Z")
    assert notification.raw["Type"] == "Notification"


def test_drain_consumes_what_it_returns(stack: LocalStack, sns: Any, sqs: Any, inbox: str) -> None:
    # GIVEN two notifications in the inbox
    topic = stack.topic_arns["Topic"]
    _publish_job_event(sns, topic, "j-2")
    _publish_job_event(sns, topic, "j-3")

    # WHEN the inbox is drained twice
    first = drain(sqs, inbox, wait_s=5)
    second = drain(sqs, inbox)

    # THEN the first read returns both, in order, and leaves nothing behind
    assert [n.message["job_id"] for n in first] == ["j-2", "j-3"]
    assert second == []


def test_the_cli_prints_one_json_line_per_notification(
    stack: LocalStack, sns: Any, inbox: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a run file naming this (running) process's stack, and one notification
    run_file = tmp_path / "local-stack.json"
    run_file.write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "moto_url": stack.moto_url,
                "region": stack.region,
                "notifications_queue_url": inbox,
            }
        )
    )
    _publish_job_event(sns, stack.topic_arns["Topic"], "j-4")

    # WHEN `python -m broker.local notifications` runs
    code = cli.main(["--run-file", str(run_file), "notifications", "--wait", "5"])

    # THEN it printed the notification as one JSON line
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert len(lines) == 1
    printed = json.loads(lines[0])
    assert printed["message"]["job_id"] == "j-4"
    assert printed["message_attributes"]["type"] == "job.state"
    assert printed["topic_arn"] == stack.topic_arns["Topic"]


def test_a_raw_delivery_body_is_not_a_notification() -> None:
    # GIVEN the body a raw-delivery subscription would produce (the bare message)
    # WHEN / THEN it is refused as a notification envelope
    with pytest.raises(NotificationError, match="not an SNS notification"):
        parse_notification(json.dumps({"job_id": "j-5"}))


def test_a_non_json_message_is_kept_as_text_and_attributes_are_typed() -> None:
    # GIVEN an envelope with a plain-text message and every attribute type
    envelope = {
        "Type": "Notification",
        "MessageId": "m",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:t",
        "Message": "hello",
        "Timestamp": "2026-11-21T15:59:35.342Z",
        "MessageAttributes": {
            "n": {"Type": "Number", "Value": "2.5"},
            "l": {"Type": "String.Array", "Value": '["a", 1]'},
            "b": {"Type": "Binary", "Value": "AAE="},
        },
    }

    # WHEN it is parsed
    notification = parse_notification(json.dumps(envelope))

    # THEN the message stays text, there is no subject, and attribute values are typed
    assert notification.message == "hello"
    assert notification.subject is None
    assert notification.message_attributes == {"n": 2.5, "l": ["a", 1], "b": b"\x00\x01"}


def test_without_the_inbox_option_there_is_no_inbox(stack: LocalStack) -> None:
    # GIVEN a stack started with notifications_inbox=False (after the module's one stops)
    stack.stop()
    try:
        with LocalStack(
            TEST_TEMPLATE, access_log=False, schedules_enabled=False, notifications_inbox=False
        ) as bare:
            # WHEN / THEN the topic exists but the inbox does not
            assert "Topic" in bare.topic_arns
            with pytest.raises(LocalStackError, match="inbox"):
                _ = bare.notifications_queue_url
    finally:
        stack.start()
