"""Emulate Lambda's SQS event source mapping: poll a queue, invoke a handler, delete what succeeded.

One :class:`SqsPoller` per ``SQS`` event of a function in ``template.yaml``, with one or more
threads. Each thread long-polls ``ReceiveMessage``, gathers up to ``BatchSize`` messages or until
``MaximumBatchingWindowInSeconds`` has passed since the first one, builds the same event Lambda
builds (``Records`` with ``attributes``, lowercase ``messageAttributes``, ``md5OfBody``,
``eventSourceARN`` …) and invokes the handler with a fresh
:class:`~broker.local.context.LambdaContext`. Then, as Lambda does:

* handler returns normally, no ``ReportBatchItemFailures``: every message is deleted;
* with ``ReportBatchItemFailures``: every message is deleted except those named in
  ``batchItemFailures``; an empty, missing or unknown ``itemIdentifier`` fails the whole batch;
* handler raises: nothing is deleted. The messages come back after the queue's visibility
  timeout, and SQS (moto) moves them to the DLQ after ``maxReceiveCount`` receives.

Handler errors are logged and counted (:meth:`SqsPoller.stats`); a poller thread never dies of
one.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from broker.local.context import LambdaContext
from broker.local.template import SqsEventDef

__all__ = ["PollerStats", "SqsPoller", "build_sqs_event"]

logger = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], Any], Any]

_SQS_MAX_RECEIVE: Final = 10
# Attributes Lambda copies into a record (FIFO ones only exist on FIFO queues).
_RECORD_ATTRIBUTES: Final = (
    "ApproximateReceiveCount",
    "SentTimestamp",
    "SenderId",
    "ApproximateFirstReceiveTimestamp",
    "SequenceNumber",
    "MessageGroupId",
    "MessageDeduplicationId",
    "AWSTraceHeader",
    "DeadLetterQueueSourceArn",
)
_ERROR_BACKOFF_S: Final = 1.0


@dataclass(frozen=True)
class PollerStats:
    """Counters of one poller since it started."""

    function: str
    queue: str
    invocations: int
    records: int
    deleted: int
    failed_records: int
    handler_errors: int
    receive_errors: int


def _message_attribute(value: dict[str, Any]) -> dict[str, Any]:
    # SQS's API form -> Lambda's event form (lowercase keys, binary as base64 text).
    binary = value.get("BinaryValue")
    return {
        "stringValue": value.get("StringValue"),
        "binaryValue": base64.b64encode(binary).decode() if binary is not None else None,
        "stringListValues": list(value.get("StringListValues", [])),
        "binaryListValues": [
            base64.b64encode(b).decode() for b in value.get("BinaryListValues", [])
        ],
        "dataType": value.get("DataType", "String"),
    }


def build_sqs_event(
    messages: Sequence[dict[str, Any]], *, queue_arn: str, region: str
) -> dict[str, Any]:
    """The Lambda SQS event for received messages (``ReceiveMessage`` ``Messages`` entries)."""
    records = []
    for message in messages:
        received = message.get("Attributes", {})
        records.append(
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message.get("Body", ""),
                "attributes": {k: received[k] for k in _RECORD_ATTRIBUTES if k in received},
                "messageAttributes": {
                    name: _message_attribute(value)
                    for name, value in message.get("MessageAttributes", {}).items()
                },
                "md5OfBody": message.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
        )
    return {"Records": records}


def failed_message_ids(result: Any, message_ids: Sequence[str]) -> set[str]:
    """Which messages a ``ReportBatchItemFailures`` response marks as failed.

    Lambda treats a response it cannot use (an ``itemIdentifier`` that is empty, missing or not
    in the batch; a malformed ``batchItemFailures``) as a failure of the whole batch.
    """
    if result is None:
        return set()
    if not isinstance(result, dict):
        return set(message_ids)
    failures = result.get("batchItemFailures")
    if failures is None:
        return set()
    if not isinstance(failures, list):
        return set(message_ids)
    failed: set[str] = set()
    for item in failures:
        identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
        if not isinstance(identifier, str) or identifier not in message_ids:
            return set(message_ids)
        failed.add(identifier)
    return failed


def _dedupe(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # A message whose visibility ran out while the batch was gathering can be received twice;
    # keep one record per message id, with the newest receipt handle (the only valid one).
    latest: dict[str, dict[str, Any]] = {}
    for message in batch:
        latest[message["MessageId"]] = message
    return list(latest.values())


class SqsPoller:
    """Lambda's SQS event source mapping for one function and one queue.

    Args:
        function_name: the function's name (for the Lambda context and logs).
        handler: the function's ``lambda_handler``.
        event: the mapping as read from the template.
        queue_url: URL of the queue to poll.
        queue_arn: its ARN (``eventSourceARN``).
        region: ``awsRegion`` of the records.
        account_id: for the Lambda context's ARN.
        timeout_s / memory_mb: the function's ``Timeout`` and ``MemorySize``.
        threads: concurrent pollers (Lambda scales to several; 1 keeps local runs simple).
        wait_seconds: long-poll wait; short, so :meth:`stop` is prompt.
        endpoint_url: AWS endpoint (default: boto3's own, i.e. ``AWS_ENDPOINT_URL``).
    """

    def __init__(
        self,
        *,
        function_name: str,
        handler: Handler,
        event: SqsEventDef,
        queue_url: str,
        queue_arn: str,
        region: str,
        account_id: str,
        timeout_s: float = 30.0,
        memory_mb: int = 512,
        threads: int = 1,
        wait_seconds: int = 1,
        endpoint_url: str | None = None,
    ) -> None:
        if threads < 1:
            raise ValueError("a poller needs at least one thread")
        self.function_name = function_name
        self.handler = handler
        self.event = event
        self.queue_url = queue_url
        self.queue_arn = queue_arn
        self.region = region
        self.account_id = account_id
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.thread_count = threads
        self.wait_seconds = wait_seconds
        self._sqs: Any = boto3.client("sqs", region_name=region, endpoint_url=endpoint_url)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(
            (
                "invocations",
                "records",
                "deleted",
                "failed_records",
                "handler_errors",
                "receive_errors",
            ),
            0,
        )

    @property
    def sqs_client(self) -> Any:
        """The poller's own SQS client (a chaos run hooks its events: broker.local.faults)."""
        return self._sqs

    @property
    def name(self) -> str:
        """``<function>/<event>``, e.g. ``JobWorkerFunction/Requests``."""
        return f"{self.function_name}/{self.event.name}"

    def start(self) -> None:
        """Start the polling threads."""
        if self._threads:
            raise RuntimeError(f"poller {self.name} already started")
        self._stop.clear()
        for index in range(self.thread_count):
            thread = threading.Thread(
                target=self._run, name=f"sqs-poller-{self.name}-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def request_stop(self) -> None:
        """Ask the threads to stop after their current receive or invocation (no wait)."""
        self._stop.set()

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Ask every thread to stop and wait for them (bounded).

        Returns:
            Whether every thread stopped in time (one stuck in a slow handler may not).
        """
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            logger.warning("poller threads still running after %.1fs: %s", timeout_s, alive)
        self._threads = []
        return not alive

    @property
    def running(self) -> bool:
        """Whether any polling thread is alive."""
        return any(t.is_alive() for t in self._threads)

    def stats(self) -> PollerStats:
        """A snapshot of the counters."""
        with self._lock:
            return PollerStats(function=self.function_name, queue=self.queue_url, **self._counts)

    def stats_dict(self) -> dict[str, Any]:
        """:meth:`stats` as a plain dict (for JSON status output)."""
        return asdict(self.stats())

    def _count(self, **increments: int) -> None:
        with self._lock:
            for key, value in increments.items():
                self._counts[key] += value

    # -- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                batch = self._gather()
            except (ClientError, BotoCoreError) as exc:
                self._count(receive_errors=1)
                if self._stop.is_set():
                    break
                logger.warning("%s: receive from %s failed: %s", self.name, self.queue_url, exc)
                self._stop.wait(_ERROR_BACKOFF_S)
                continue
            if not batch:
                continue
            if self._stop.is_set():
                self._release(batch)
                break
            try:
                self._process(batch)
            except Exception:  # a poller must never die: log and keep polling
                logger.exception("%s: processing a batch failed", self.name)

    def _receive(self, max_messages: int, wait_seconds: int) -> list[dict[str, Any]]:
        response = self._sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=max_messages,
            WaitTimeSeconds=wait_seconds,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages: list[dict[str, Any]] = response.get("Messages", [])
        return messages

    def _gather(self) -> list[dict[str, Any]]:
        """One batch: the first receive long-polls; later ones fill it until the window ends."""
        batch_size = self.event.batch_size
        batch = self._receive(min(batch_size, _SQS_MAX_RECEIVE), self.wait_seconds)
        if not batch:
            return batch
        window_end = time.monotonic() + self.event.batching_window_s
        while len(batch) < batch_size and not self._stop.is_set():
            remaining = window_end - time.monotonic()
            if remaining <= 0:
                break
            wait = 1 if remaining >= 1 else 0
            try:
                more = self._receive(min(batch_size - len(batch), _SQS_MAX_RECEIVE), wait)
            except (ClientError, BotoCoreError) as exc:
                # What was received is in flight: invoke with it rather than leave it hidden
                # until its visibility timeout (15 minutes for the requests queue).
                self._count(receive_errors=1)
                logger.warning("%s: receive failed while batching: %s", self.name, exc)
                break
            batch.extend(more)
            if not more and wait == 0:
                self._stop.wait(min(0.05, remaining))
        return _dedupe(batch)

    def _process(self, batch: list[dict[str, Any]]) -> None:
        event = build_sqs_event(batch, queue_arn=self.queue_arn, region=self.region)
        context = LambdaContext.for_invocation(
            function_name=self.function_name,
            timeout_s=self.timeout_s,
            memory_mb=self.memory_mb,
            region=self.region,
            account_id=self.account_id,
        )
        ids = [m["MessageId"] for m in batch]
        self._count(invocations=1, records=len(batch))
        try:
            result = self.handler(event, context)
        except Exception:
            self._count(handler_errors=1, failed_records=len(batch))
            logger.exception(
                "%s raised on a batch of %d; the messages come back after the visibility timeout",
                self.name,
                len(batch),
            )
            return
        if context.overran:
            logger.warning(
                "%s took longer than its %ss timeout (AWS would have stopped it)",
                self.name,
                self.timeout_s,
            )
        failed = failed_message_ids(result, ids) if self.event.report_batch_item_failures else set()
        if failed:
            self._count(failed_records=len(failed))
            logger.info("%s: %d of %d records failed", self.name, len(failed), len(batch))
        self._delete([m for m in batch if m["MessageId"] not in failed])

    def _delete(self, messages: list[dict[str, Any]]) -> None:
        for start in range(0, len(messages), _SQS_MAX_RECEIVE):
            chunk = messages[start : start + _SQS_MAX_RECEIVE]
            entries = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)
            ]
            try:
                response = self._sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
            except (ClientError, BotoCoreError) as exc:
                logger.warning(
                    "%s: delete failed (messages will be redelivered): %s", self.name, exc
                )
                continue
            self._count(deleted=len(response.get("Successful", [])))
            for failure in response.get("Failed", []):
                logger.warning("%s: delete failed for one message: %s", self.name, failure)

    def _release(self, messages: list[dict[str, Any]]) -> None:
        """Make gathered but unprocessed messages visible again at once (on stop)."""
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
            for i, m in enumerate(messages)
        ]
        for start in range(0, len(entries), _SQS_MAX_RECEIVE):
            try:
                self._sqs.change_message_visibility_batch(
                    QueueUrl=self.queue_url, Entries=entries[start : start + _SQS_MAX_RECEIVE]
                )
            except (ClientError, BotoCoreError) as exc:
                logger.debug("%s: releasing messages on stop failed: %s", self.name, exc)
