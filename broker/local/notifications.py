"""A local inbox for the template's SNS topics: one SQS queue subscribed to all of them.

In AWS someone subscribes to ``NotificationsTopic`` (e-mail, a queue, a Lambda…). Locally the
stack subscribes one queue, ``<prefix>-notifications``, to every ``AWS::SNS::Topic`` of the
template, with envelope delivery (``RawMessageDelivery`` off): each message body is the JSON
document a real SQS subscriber receives (``Type``, ``MessageId``, ``TopicArn``, ``Subject``,
``Message``, ``Timestamp``, ``MessageAttributes`` as ``{"Type", "Value"}``). :func:`drain`
reads and deletes what arrived, parsed into :class:`Notification`; ``python -m broker.local
notifications [--follow]`` prints them.

moto delivers SNS -> SQS synchronously: once ``Publish`` returns, the message is in the queue.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from botocore.exceptions import BotoCoreError, ClientError

__all__ = [
    "Inbox",
    "Notification",
    "NotificationError",
    "create_inbox",
    "drain",
    "parse_notification",
]

logger = logging.getLogger(__name__)

_SQS_MAX_RECEIVE: Final = 10
_SQS_MAX_WAIT_S: Final = 20
_SHORT_POLL_PAUSE_S: Final = 0.05


class NotificationError(ValueError):
    """A queue message that is not an SNS notification envelope."""


@dataclass(frozen=True)
class Notification:
    """One SNS notification as an SQS subscriber receives it (envelope delivery).

    ``message`` is the parsed JSON when the published message is JSON, else the text.
    ``message_attributes`` maps each name to its value: ``String`` as text, ``Number`` as
    ``int``/``float``, ``String.Array`` as a list, ``Binary`` as bytes.
    """

    message_id: str
    topic_arn: str
    subject: str | None
    message: Any
    message_attributes: dict[str, Any]
    timestamp: str
    raw: dict[str, Any] = field(repr=False, compare=False)

    def to_json(self) -> str:
        """One JSON line (binary attributes as base64 text)."""
        attributes = {
            name: base64.b64encode(value).decode() if isinstance(value, bytes) else value
            for name, value in self.message_attributes.items()
        }
        return json.dumps(
            {
                "message_id": self.message_id,
                "topic_arn": self.topic_arn,
                "subject": self.subject,
                "timestamp": self.timestamp,
                "message_attributes": attributes,
                "message": self.message,
            },
            sort_keys=False,
        )


def _attribute_value(name: str, spec: Any) -> Any:
    if not isinstance(spec, dict) or "Value" not in spec:
        raise NotificationError(f"message attribute {name!r} has no Type/Value: {spec!r}")
    kind, value = str(spec.get("Type", "String")), spec["Value"]
    try:
        if kind.startswith("Number"):
            number = float(value)
            return int(number) if number.is_integer() and "." not in str(value) else number
        if kind.startswith("String.Array"):
            return json.loads(value)
        if kind.startswith("Binary"):
            return base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise NotificationError(f"message attribute {name!r} ({kind}) is malformed") from exc
    return value


def parse_notification(body: str) -> Notification:
    """Parse the body of an SQS message delivered by an SNS subscription (envelope form).

    Raises:
        NotificationError: the body is not a ``Type: Notification`` envelope (e.g. a raw
            delivery, or a ``SubscriptionConfirmation``).
    """
    try:
        envelope = json.loads(body)
    except ValueError as exc:
        raise NotificationError("message body is not JSON") from exc
    if not isinstance(envelope, dict) or envelope.get("Type") != "Notification":
        kind = envelope.get("Type") if isinstance(envelope, dict) else type(envelope).__name__
        raise NotificationError(f"not an SNS notification envelope (Type {kind!r})")
    text = envelope.get("Message", "")
    try:
        message: Any = json.loads(text)
    except (TypeError, ValueError):
        message = text
    attributes = {
        name: _attribute_value(name, spec)
        for name, spec in (envelope.get("MessageAttributes") or {}).items()
    }
    return Notification(
        message_id=str(envelope.get("MessageId", "")),
        topic_arn=str(envelope.get("TopicArn", "")),
        subject=envelope.get("Subject"),
        message=message,
        message_attributes=attributes,
        timestamp=str(envelope.get("Timestamp", "")),
        raw=envelope,
    )


def drain(sqs: Any, url: str, wait_s: float = 0.0) -> list[Notification]:
    """Receive, parse and delete every notification in the inbox queue.

    Waits up to ``wait_s`` seconds for the first message, then reads until the queue is empty.
    A message that is not a notification is logged and deleted (the inbox is ours alone).

    Args:
        sqs: a boto3 SQS client.
        url: the inbox queue URL.
        wait_s: how long to wait when the queue is empty (0: just look).

    Returns:
        The notifications, in the order received.

    Raises:
        ClientError / BotoCoreError: SQS could not be reached.
    """
    deadline = time.monotonic() + max(0.0, wait_s)
    found: list[Notification] = []
    while True:
        remaining = deadline - time.monotonic()
        wait = 0 if found or remaining < 1 else min(_SQS_MAX_WAIT_S, int(remaining))
        response = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=_SQS_MAX_RECEIVE,
            WaitTimeSeconds=wait,
            MessageAttributeNames=["All"],
        )
        messages: list[dict[str, Any]] = response.get("Messages", [])
        if messages:
            found.extend(_parse_all(messages))
            _delete(sqs, url, messages)
            continue
        if found or remaining <= 0:
            return found
        if wait == 0:
            time.sleep(min(_SHORT_POLL_PAUSE_S, max(0.0, remaining)))


def _parse_all(messages: Iterable[dict[str, Any]]) -> list[Notification]:
    parsed = []
    for message in messages:
        try:
            parsed.append(parse_notification(message.get("Body", "")))
        except NotificationError as exc:
            logger.warning("inbox: dropping message %s: %s", message.get("MessageId"), exc)
    return parsed


def _delete(sqs: Any, url: str, messages: list[dict[str, Any]]) -> None:
    entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
    response = sqs.delete_message_batch(QueueUrl=url, Entries=entries)
    for failure in response.get("Failed", []):
        logger.warning("inbox: delete failed (it will be read again): %s", failure)


@dataclass(frozen=True)
class Inbox:
    """The local notifications queue and its subscriptions (topic ARN -> subscription ARN)."""

    queue_url: str
    queue_arn: str
    subscriptions: dict[str, str]


def create_inbox(sqs: Any, sns: Any, *, name: str, topic_arns: Iterable[str]) -> Inbox:
    """Create the inbox queue and subscribe it to each topic, envelope delivery.

    The queue policy lets the topics send to it, as AWS requires of an SQS subscription (moto
    does not check, but the inbox is then set up the way a real subscriber would be).

    Raises:
        ClientError / BotoCoreError: a call failed.
    """
    topics = list(topic_arns)
    url = str(sqs.create_queue(QueueName=name)["QueueUrl"])
    arn = str(
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
    )
    if topics:
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "local-notifications-inbox",
                    "Effect": "Allow",
                    "Principal": {"Service": "sns.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": topics}},
                }
            ],
        }
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(policy)})
    subscriptions: dict[str, str] = {}
    for topic in topics:
        try:
            response = sns.subscribe(
                TopicArn=topic,
                Protocol="sqs",
                Endpoint=arn,
                # Envelope delivery: message attributes stay inside the body, as a real SQS
                # subscriber without RawMessageDelivery sees them.
                Attributes={"RawMessageDelivery": "false"},
                ReturnSubscriptionArn=True,
            )
        except (ClientError, BotoCoreError):
            logger.exception("inbox: subscribing to %s failed", topic)
            raise
        subscriptions[topic] = str(response["SubscriptionArn"])
    return Inbox(queue_url=url, queue_arn=arn, subscriptions=subscriptions)
