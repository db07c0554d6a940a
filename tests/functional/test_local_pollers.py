"""broker.local.pollers against moto over HTTP: the SQS event source mapping emulation deletes
what succeeded, redelivers what failed, and lets SQS redrive to the DLQ.

The stack runs tests/functional/local_stack_template.yaml: WorkerFunction drains WorkQueue
(batch 10, 1 s window, ReportBatchItemFailures; visibility 2 s, maxReceiveCount 2 -> WorkDLQ),
DlqFunction drains WorkDLQ. Handlers are in tests/functional/local_handlers.py.
"""

from __future__ import annotations

import base64
import importlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.parser.models import SqsModel
from botocore.awsrequest import AWSResponse

from broker.local.pollers import build_sqs_event, failed_message_ids
from broker.local.stack import LocalStack

TEST_TEMPLATE = Path(__file__).resolve().parent / "local_stack_template.yaml"
WAIT_S = 20.0


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack(TEST_TEMPLATE, access_log=False) as running:
        yield running


@pytest.fixture(scope="module")
def handlers(stack: LocalStack) -> ModuleType:
    # Imported by the stack (after it set the environment); fetched here, never imported first.
    return importlib.import_module("tests.functional.local_handlers")


@pytest.fixture(scope="module")
def sqs(stack: LocalStack) -> Any:
    return boto3.client("sqs", endpoint_url=stack.moto_url, region_name="us-east-1")


def _wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout}s")


def _send(sqs: Any, queue_url: str, *bodies: dict[str, Any]) -> None:
    entries = [{"Id": str(i), "MessageBody": json.dumps(b)} for i, b in enumerate(bodies)]
    sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)


def _in_queue(sqs: Any, queue_url: str) -> int:
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def _ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


def test_a_successful_batch_is_deleted(stack: LocalStack, handlers: ModuleType, sqs: Any) -> None:
    # GIVEN three messages the worker accepts
    ids = _ids(3)
    queue = stack.queue_url("WorkQueue")

    # WHEN they are sent and processed
    _send(sqs, queue, *({"id": i} for i in ids))
    _wait_until(lambda: all(handlers.deliveries(i) for i in ids))

    # THEN each was delivered once and none is left in the queue (deleted, not just hidden)
    _wait_until(lambda: _in_queue(sqs, queue) == 0)
    assert [handlers.deliveries(i) for i in ids] == [[("worker", 1)]] * 3


def test_a_partial_failure_redelivers_only_the_failed_message(
    stack: LocalStack, handlers: ModuleType, sqs: Any
) -> None:
    # GIVEN one message that fails its first delivery (reported in batchItemFailures) and two
    # that succeed
    failing, ok1, ok2 = _ids(3)
    queue = stack.queue_url("WorkQueue")

    # WHEN they are processed until the failing one is delivered again
    _send(sqs, queue, {"id": failing, "fail_until": 1}, {"id": ok1}, {"id": ok2})
    _wait_until(lambda: len(handlers.deliveries(failing)) == 2)
    _wait_until(lambda: _in_queue(sqs, queue) == 0)

    # THEN only the failed message came back (receive count 2); the others were deleted
    assert handlers.deliveries(failing) == [("worker", 1), ("worker", 2)]
    assert handlers.deliveries(ok1) == [("worker", 1)]
    assert handlers.deliveries(ok2) == [("worker", 1)]


def test_a_raising_handler_redelivers_the_whole_batch(
    stack: LocalStack, handlers: ModuleType, sqs: Any
) -> None:
    # GIVEN a batch where one message makes the handler raise on its first delivery
    raising, innocent = _ids(2)
    queue = stack.queue_url("WorkQueue")

    # WHEN they are processed (the 1 s batching window puts both in one invocation)
    _send(sqs, queue, {"id": raising, "fail_until": 1, "mode": "raise"}, {"id": innocent})
    _wait_until(lambda: len(handlers.deliveries(innocent)) >= 2)
    _wait_until(lambda: _in_queue(sqs, queue) == 0)

    # THEN nothing of the failed invocation was deleted: both messages came back once
    assert handlers.deliveries(raising) == [("worker", 1), ("worker", 2)]
    assert handlers.deliveries(innocent) == [("worker", 1), ("worker", 2)]


def test_a_message_that_always_fails_ends_in_the_dlq_after_max_receive_count(
    stack: LocalStack, handlers: ModuleType, sqs: Any
) -> None:
    # GIVEN a message that fails every delivery (maxReceiveCount is 2)
    (doomed,) = _ids(1)

    # WHEN it is processed until the DLQ function sees it
    _send(sqs, stack.queue_url("WorkQueue"), {"id": doomed, "fail_until": 99})
    _wait_until(lambda: any(fn == "dlq" for fn, _ in handlers.deliveries(doomed)))

    # THEN the worker had it twice, then SQS redrove it to the DLQ, drained by DlqFunction
    deliveries = handlers.deliveries(doomed)
    assert deliveries[:2] == [("worker", 1), ("worker", 2)]
    assert [d[0] for d in deliveries[2:]] == ["dlq"]
    _wait_until(lambda: _in_queue(sqs, stack.queue_url("WorkDLQ")) == 0)


def test_stats_count_invocations_records_and_reported_failures(
    stack: LocalStack, handlers: ModuleType, sqs: Any
) -> None:
    # GIVEN the worker poller's counters, and a batch with one reported failure
    poller = next(p for p in stack.pollers if p.event.name == "Work")
    before = poller.stats()
    failing, ok = _ids(2)

    # WHEN the batch is processed, the failure included
    _send(sqs, stack.queue_url("WorkQueue"), {"id": failing, "fail_until": 1}, {"id": ok})
    _wait_until(lambda: len(handlers.deliveries(failing)) == 2)
    _wait_until(lambda: poller.stats().deleted - before.deleted == 2)
    after = poller.stats()

    # THEN records, deletions and failures are counted (invocations: at least the two)
    assert after.records - before.records == 3
    assert after.failed_records - before.failed_records == 1
    assert after.invocations - before.invocations >= 2
    assert after.handler_errors == before.handler_errors


# -- the event and the response contract (no queue needed) ---------------------------------------


def test_sqs_event_has_lambdas_record_shape() -> None:
    # GIVEN a message as ReceiveMessage returns it, with a string and a binary attribute
    message = {
        "MessageId": "m-1",
        "ReceiptHandle": "rh",
        "MD5OfBody": "49f68a5c8493ec2c0bf489821c21fc3b",
        "Body": "hi",
        "Attributes": {
            "SenderId": "AIDAIT2UOQQY3AUEKVGXU",
            "SentTimestamp": "1795275364298",
            "ApproximateReceiveCount": "1",
            "ApproximateFirstReceiveTimestamp": "1795275364308",
        },
        "MessageAttributes": {
            "s": {"StringValue": "v", "DataType": "String"},
            "b": {"BinaryValue": b"\x00\x01", "DataType": "Binary"},
        },
    }

    # WHEN the Lambda event is built
    event = build_sqs_event([message], queue_arn="arn:aws:sqs:us-east-1:1:q", region="us-east-1")

    # THEN Powertools' model of an SQS event accepts it, attributes are in Lambda's lowercase
    # form, and binary values are base64 text
    SqsModel.model_validate(event)
    record = event["Records"][0]
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == "arn:aws:sqs:us-east-1:1:q"
    assert record["messageAttributes"]["s"]["stringValue"] == "v"
    assert record["messageAttributes"]["b"]["binaryValue"] == base64.b64encode(b"\x00\x01").decode()
    assert record["messageAttributes"]["b"]["dataType"] == "Binary"


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ({"batchItemFailures": []}, set()),
        (None, set()),
        ({"batchItemFailures": [{"itemIdentifier": "b"}]}, {"b"}),
        ({"batchItemFailures": [{"itemIdentifier": "unknown"}]}, {"a", "b"}),
        ({"batchItemFailures": [{"itemIdentifier": ""}]}, {"a", "b"}),
        ({"batchItemFailures": [{}]}, {"a", "b"}),
        ({"batchItemFailures": "nonsense"}, {"a", "b"}),
    ],
)
def test_batch_item_failures_are_read_as_lambda_reads_them(result: Any, expected: set[str]) -> None:
    # GIVEN a batch of messages a and b, and a handler response
    # WHEN the failed messages are derived
    # THEN listed ids fail; an empty, missing or unknown identifier fails the whole batch
    assert failed_message_ids(result, ["a", "b"]) == expected


def test_a_failed_receive_while_gathering_keeps_the_messages_already_received(
    stack: LocalStack, handlers: ModuleType, sqs: Any
) -> None:
    # GIVEN a worker poller whose next ReceiveMessage fails once it has received a message
    # (an SQS error in the middle of its batching window)
    poller = next(p for p in stack.pollers if p.event.name == "Work")
    armed = {"received": False, "failed": 0}

    def note(parsed: dict[str, Any], **_: Any) -> None:
        armed["received"] = armed["received"] or bool(parsed.get("Messages"))

    def fail(**_: Any) -> tuple[Any, dict[str, Any]] | None:
        if not armed["received"] or armed["failed"]:
            return None
        armed["failed"] += 1
        error = {"Error": {"Code": "ServiceUnavailable", "Message": "test"},
                 "ResponseMetadata": {"HTTPStatusCode": 503}}  # fmt: skip
        return AWSResponse("http://test.invalid/", 503, {}, None), error

    events = poller.sqs_client.meta.events
    events.register("after-call.sqs.ReceiveMessage", note)
    events.register("before-call.sqs.ReceiveMessage", fail)
    try:
        # WHEN a message is sent
        (message_id,) = _ids(1)
        _send(sqs, stack.queue_url("WorkQueue"), {"id": message_id})
        _wait_until(lambda: bool(handlers.deliveries(message_id)))
    finally:
        events.unregister("after-call.sqs.ReceiveMessage", note)
        events.unregister("before-call.sqs.ReceiveMessage", fail)
    # THEN the receive did fail, and the message was still handled on its first delivery
    # (not dropped until its visibility timeout brought it back)
    assert armed["failed"] == 1
    assert handlers.deliveries(message_id) == [("worker", 1)]
