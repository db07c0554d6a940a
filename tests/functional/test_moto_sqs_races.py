"""The local emulator's SQS (broker/local/moto_patches.py, ``locked_sqs_queues``) loses no message
when a delete meets a receive that moves another message to the DLQ.

moto's delete rebuilds the queue's message list by iterating the live list; the receive removes
the message it dead-letters from that same list meanwhile, so the iteration skips the next
message, which is dropped from the queue for ever (what the chaos run saw: the poison, and a
chunk the killed worker had taken, left the requests queue without reaching the DLQ worker).
The test makes the race happen for certain: the delete is paused inside its rebuild (a hook on
moto's receipt-handle check) while another thread receives.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from moto.sqs.models import Message

from broker.adapters.aws import client

#: How long the paused delete lets the other thread run (it finishes at once unless it waits
#: for the queue's lock, which is what the patch makes it do).
_PAUSE_S = 1.0


@pytest.fixture
def queues(moto_url: str) -> tuple[str, str]:
    """A source queue whose messages go to a DLQ after one receive; (source url, dlq url)."""
    sqs = client("sqs")
    suffix = uuid.uuid4().hex[:8]
    dlq = sqs.create_queue(QueueName=f"race-dlq-{suffix}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    policy = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": 1})
    source = sqs.create_queue(QueueName=f"race-src-{suffix}", Attributes={"RedrivePolicy": policy})[
        "QueueUrl"
    ]
    return source, dlq


class Interleaving:
    """Actions to run in other threads when a delete's rebuild reaches a message."""

    def __init__(self) -> None:
        self.pending: dict[str, Callable[[], None]] = {}
        self.threads: list[threading.Thread] = []

    def at(self, body: str, action: Callable[[], None]) -> None:
        """Run ``action`` when the next delete's rebuild reaches the message with ``body``."""
        self.pending[body] = action

    def join(self) -> None:
        """Wait for the actions started."""
        for thread in self.threads:
            thread.join(30)


@pytest.fixture
def during_delete(monkeypatch: pytest.MonkeyPatch) -> Iterator[Interleaving]:
    """Interleave actions with moto's deletes (see Interleaving)."""
    interleaving = Interleaving()
    pending, threads = interleaving.pending, interleaving.threads
    original = Message.had_receipt_handle

    def had_receipt_handle(self: Message, receipt_handle: str) -> bool:
        action = pending.pop(self.body, None)
        if action is not None:
            done = threading.Event()

            def run() -> None:
                action()
                done.set()

            thread = threading.Thread(target=run)
            threads.append(thread)
            thread.start()
            done.wait(_PAUSE_S)
        return bool(original(self, receipt_handle))

    monkeypatch.setattr(Message, "had_receipt_handle", had_receipt_handle)
    yield interleaving
    interleaving.join()


def bodies(queue_url: str) -> list[str]:
    found: list[str] = []
    while True:
        got = client("sqs").receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)
        messages: list[dict[str, Any]] = got.get("Messages", [])
        if not messages:
            return sorted(found)
        found += [m["Body"] for m in messages]


def received_once(queue_url: str, body: str) -> str:
    """Send ``body`` and receive it: its receipt handle."""
    sqs = client("sqs")
    sqs.send_message(QueueUrl=queue_url, MessageBody=body)
    (message,) = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1)["Messages"]
    assert message["Body"] == body
    return str(message["ReceiptHandle"])


def test_a_receive_that_dead_letters_during_a_delete_loses_no_other_message(
    queues: tuple[str, str], during_delete: Interleaving
) -> None:
    # GIVEN a source queue holding, in this order: a message being handled ("done"), the
    # poison, received once and visible again (its next receive moves it to the DLQ), and a
    # message waiting ("waiting")
    source, dlq = queues
    sqs = client("sqs")
    done = received_once(source, "done")
    poison = received_once(source, "poison")
    sqs.change_message_visibility(QueueUrl=source, ReceiptHandle=poison, VisibilityTimeout=0)
    sqs.send_message(QueueUrl=source, MessageBody="waiting")
    taken: list[dict[str, Any]] = []

    def receive() -> None:
        got = client("sqs").receive_message(QueueUrl=source, MaxNumberOfMessages=1)
        taken.extend(got.get("Messages", []))

    # WHEN "done" is deleted while another poller's receive moves the poison to the DLQ (and
    # takes "waiting")
    during_delete.at("poison", receive)
    sqs.delete_message(QueueUrl=source, ReceiptHandle=done)
    during_delete.join()

    # THEN the poison is in the DLQ only, and "waiting" is still in the source queue
    assert [m["Body"] for m in taken] == ["waiting"]
    assert bodies(dlq) == ["poison"]
    # (reading it back would dead-letter it: it has had its one receive)
    sqs.change_message_visibility(
        QueueUrl=source, ReceiptHandle=taken[0]["ReceiptHandle"], VisibilityTimeout=0
    )
    depth = sqs.get_queue_attributes(QueueUrl=source, AttributeNames=["All"])["Attributes"]
    assert (
        depth["ApproximateNumberOfMessages"],
        depth["ApproximateNumberOfMessagesNotVisible"],
    ) == ("1", "0")
