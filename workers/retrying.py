"""What both queue workers do with one message: run it, count its outcome, and on a transient
error shorten the message's visibility to an exponential back-off before failing the record (so
SQS delivers it again, and after MaxReceiveCount moves it to the DLQ)."""

from __future__ import annotations

import random
from collections.abc import Callable

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from broker.errors import BrokerError, TransientError
from broker.observability import logger, metrics
from broker.ports import RequestQueue


def backoff_seconds(receive_count: int, base: int, cap: int) -> int:
    """Delay before the next delivery: base * 2^(n-1), capped, with up to 20 % jitter."""
    delay = min(cap, base * 2 ** max(0, receive_count - 1))
    return int(delay + random.uniform(0, delay * 0.2))  # noqa: S311 - jitter, not crypto


def run_with_backoff(
    record: SQSRecord,
    kind: str,
    handle: Callable[[], str],
    queue: Callable[[], RequestQueue],
    backoff: tuple[int, int],
) -> None:
    """Run ``handle`` (returns the outcome's name); a TransientError delays the redelivery.

    ``queue`` gives the worker's queue adapter (only on a retry); ``backoff`` is (base, cap).
    """
    try:
        outcome = handle()
    except TransientError:
        count = int(record.attributes.approximate_receive_count or 1)
        delay = backoff_seconds(count, *backoff)
        metrics.add_metric(name=f"{kind}.retry", unit="Count", value=1)
        try:
            queue().delay_retry(record.event_source_arn, record.receipt_handle, delay)
        except BrokerError:
            logger.warning("could not shorten the retry delay; the message returns later")
        raise
    metrics.add_metric(name=f"{kind}.{outcome}", unit="Count", value=1)


def batch_processor() -> BatchProcessor:
    """A partial-failure batch processor for one invocation.

    One per invocation, not one per module as Powertools' examples have it: a processor keeps
    the invocation's records and failures on itself, so two invocations running at once in one
    process share them (the local stack's pollers are threads). One invocation's start cleared
    the other's failures, whose failed messages were then deleted, their requests never ending
    (found by the chaos run). A batch whose every record failed is reported as such (all items
    listed), not raised: the outcome is the same (every message comes back) without counting a
    function error.
    """
    return BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
