"""Job worker Lambda (``workers.job_worker.lambda_handler``): drains the requests queue.

Each SQS record is one request: a job submission, cancel or output fetch. Permanent errors are
recorded on the request (FAILED) and the record is acknowledged; transient errors shorten the
message's visibility (exponential back-off) and fail the record, so SQS delivers it again, and
after MaxReceiveCount moves it to the DLQ, where the DLQ worker marks the request FAILED.
Nothing is silently dropped.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from broker.models import QUEUE_MESSAGE, AnyMessage
from broker.observability import logger, metrics, tracer
from broker.settings import job_worker_settings
from broker.wiring import dispatcher, request_queue
from workers.retrying import run_with_backoff

# A batch whose every record failed is reported as such (all items listed), not raised: the
# outcome is the same (every message comes back) without counting a function error.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


@tracer.capture_method
def record_handler(record: SQSRecord) -> None:
    """Dispatch one queued submission (raises to mark the record failed)."""
    try:
        message = QUEUE_MESSAGE.validate_json(record.body)
    except ValidationError:
        # Cannot be processed, ever; fail it so it reaches the DLQ and stays inspectable.
        logger.exception("malformed queue message", extra={"message_id": record.message_id})
        raise
    logger.append_keys(request_id=message.request_id, cluster=message.cluster)
    try:
        _dispatch(record, message)
    finally:
        # Keys persist across records and invocations; keep each record's logs its own.
        logger.remove_keys(["request_id", "cluster"])


def _dispatch(record: SQSRecord, message: AnyMessage) -> None:
    settings = job_worker_settings()
    backoff = (settings.retry_base_seconds, settings.retry_max_seconds)
    run_with_backoff(record, message.kind, lambda: dispatcher().handle(message), request_queue,
                     backoff)  # fmt: skip


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    """Process an SQS batch, reporting partial failures."""
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )


def request_id_of(body: str) -> str | None:
    """The request id of a (possibly malformed) message body, if it has one."""
    try:
        value = json.loads(body).get("request_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None
