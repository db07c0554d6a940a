"""Cluster worker Lambda (``workers.cluster_worker.lambda_handler``): drains the cluster queue.

Each SQS record is one cluster operation (create, update, delete, fleet, describe). It runs on
its own queue, so a slow ParallelCluster call never delays job traffic. Permanent errors
(rejected configuration, conflict, unknown cluster) are recorded FAILED and acknowledged;
transient ones (throttling, limits) back off and fail the record, so SQS delivers it again and,
after MaxReceiveCount, moves it to the cluster DLQ, where ``dlq_handler`` ends the request
FAILED with RETRIES_EXHAUSTED. In AWS this function runs with ParallelCluster's Lambda layer;
pcluster is imported only when an operation needs it.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.batch import (
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from broker.clusters.models import ClusterMessage
from broker.observability import logger, metrics, tracer
from broker.settings import cluster_worker_settings
from broker.wiring import cluster_worker, request_queue
from workers.retrying import batch_processor, run_with_backoff


@tracer.capture_method(capture_response=False)
def record_handler(record: SQSRecord) -> None:
    """Run one queued cluster operation (raises to mark the record failed)."""
    try:
        message = ClusterMessage.model_validate_json(record.body)
    except ValidationError:
        logger.exception("malformed cluster message", extra={"message_id": record.message_id})
        raise
    logger.append_keys(request_id=message.request_id, cluster=message.cluster)
    settings = cluster_worker_settings()
    try:
        backoff = (settings.retry_base_seconds, settings.retry_max_seconds)
        run_with_backoff(record, message.kind, lambda: cluster_worker().handle(message),
                         request_queue, backoff)  # fmt: skip
    finally:
        logger.remove_keys(["request_id", "cluster"])


def dead_letter_handler(record: SQSRecord) -> None:
    """A cluster operation whose deliveries ran out: its request ends FAILED, visibly."""
    try:
        message = ClusterMessage.model_validate_json(record.body)
    except ValidationError:
        logger.error("unreadable cluster dead letter", extra={"message_id": record.message_id})
        metrics.add_metric(name="UnreadableDeadLetters", unit="Count", value=1)
        return
    if cluster_worker().give_up(message):
        metrics.add_metric(name="ClusterRequestsExhausted", unit="Count", value=1)


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    """Process a batch of cluster operations, reporting partial failures."""
    return process_partial_response(
        event=event, record_handler=record_handler, processor=batch_processor(), context=context
    )


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def dlq_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    """Process a batch of dead-lettered cluster operations."""
    return process_partial_response(
        event=event,
        record_handler=dead_letter_handler,
        processor=batch_processor(),
        context=context,
    )
