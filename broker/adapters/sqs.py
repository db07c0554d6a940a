"""SQS request queue: send one message; shorten a failed message's visibility for back-off."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from broker.adapters.aws import translate
from broker.clusters.models import ClusterMessage
from broker.requests.models import QueueMessage


class SqsRequestQueue:
    """RequestQueue port on SQS."""

    def __init__(self, client: Any, queue_url: str | None) -> None:
        self._sqs = client
        self._url = queue_url

    def send(self, message: QueueMessage) -> None:
        """Enqueue one request (its kind also travels as a message attribute)."""
        if self._url is None:
            raise RuntimeError("this queue adapter was built without a queue URL")
        try:
            self._sqs.send_message(
                QueueUrl=self._url,
                MessageBody=message.model_dump_json(),
                MessageAttributes={"kind": {"DataType": "String", "StringValue": message.kind}},
            )
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, "enqueue request") from exc

    def send_many(self, messages: list[QueueMessage]) -> list[QueueMessage]:
        """Enqueue with SendMessageBatch: up to 10 messages and 240 KiB per call.

        Returns the messages SQS did not take (the caller records them as failed).
        """
        if self._url is None:
            raise RuntimeError("this queue adapter was built without a queue URL")
        failed: list[QueueMessage] = []
        for group in _groups(messages):
            entries = [
                {
                    "Id": str(i),
                    "MessageBody": body,
                    "MessageAttributes": {
                        "kind": {"DataType": "String", "StringValue": message.kind}
                    },
                }
                for i, (message, body) in enumerate(group)
            ]
            try:
                answer = self._sqs.send_message_batch(QueueUrl=self._url, Entries=entries)
            except (ClientError, BotoCoreError):
                failed.extend(message for message, _ in group)
                continue
            failed.extend(group[int(f["Id"])][0] for f in answer.get("Failed", []))
        return failed

    def delay_retry(self, event_source_arn: str, receipt_handle: str, seconds: int) -> None:
        """Make a received message visible again after ``seconds`` (best effort).

        Lambda's event source mapping returns a failed message to the queue only when its
        visibility timeout (15 min here, 6x the worker timeout) runs out; shortening it gives a
        transient failure an exponential back-off instead. If this call fails, the message
        still comes back, later: nothing is lost, so the error is swallowed by the caller.
        """
        try:
            self._sqs.change_message_visibility(
                QueueUrl=self._queue_url_of(event_source_arn),
                ReceiptHandle=receipt_handle,
                VisibilityTimeout=max(0, min(seconds, 43200)),
            )
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, "delay retry") from exc

    def _queue_url_of(self, arn: str) -> str:
        return _url_of(self._sqs, arn)


class SqsClusterQueue:
    """ClusterQueue port on SQS (the cluster worker's own queue)."""

    def __init__(self, client: Any, queue_url: str) -> None:
        self._sqs = client
        self._url = queue_url

    def send_cluster(self, message: ClusterMessage) -> None:
        """Enqueue one cluster operation (its kind also travels as a message attribute)."""
        try:
            self._sqs.send_message(
                QueueUrl=self._url,
                MessageBody=message.model_dump_json(),
                MessageAttributes={"kind": {"DataType": "String", "StringValue": message.kind}},
            )
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, "enqueue cluster operation") from exc


#: SendMessageBatch: at most 10 entries and 256 KiB in all (a margin is kept for attributes).
_BATCH_ENTRIES = 10
_BATCH_BYTES = 240 * 1024


def _groups(messages: list[QueueMessage]) -> list[list[tuple[QueueMessage, str]]]:
    """Messages packed into SendMessageBatch calls by count and size."""
    groups: list[list[tuple[QueueMessage, str]]] = []
    size = 0
    for message in messages:
        body = message.model_dump_json()
        if not groups or len(groups[-1]) == _BATCH_ENTRIES or size + len(body) > _BATCH_BYTES:
            groups.append([])
            size = 0
        groups[-1].append((message, body))
        size += len(body)
    return groups


@lru_cache(maxsize=64)
def _url_of(sqs: Any, arn: str) -> str:
    # arn:aws:sqs:<region>:<account>:<name>
    parts = arn.split(":")
    if len(parts) != 6 or parts[2] != "sqs":
        raise ValueError(f"not an SQS queue ARN: {arn}")
    answer = sqs.get_queue_url(QueueName=parts[5], QueueOwnerAWSAccountId=parts[4])
    return str(answer["QueueUrl"])
