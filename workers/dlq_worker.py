"""DLQ worker Lambda (``workers.dlq_worker.lambda_handler``).

A message lands in the DLQ after MaxReceiveCount failed deliveries. Its request is then marked
FAILED with ``RETRIES_EXHAUSTED`` and the last transient error, so the caller sees an end state
instead of a request stuck in progress.
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

from broker.batches.models import JobBatchMessage
from broker.batches.sweeps import JobSweepMessage
from broker.jobs.models import JobSubmitMessage
from broker.observability import logger, metrics, tracer
from broker.requests.models import QUEUE_MESSAGE
from broker.wiring import dead_letter_service
from workers.job_worker import request_id_of
from workers.retrying import batch_processor


def record_handler(record: SQSRecord) -> None:
    """Mark one dead-lettered request FAILED (unreadable messages are logged and dropped).

    A batch chunk fails its own items only: the other chunks of the batch may well succeed. A
    chunk's items, or a submission's job, that are in Slurm are recorded there, not failed; a
    head node that cannot tell fails the record (the dead letter comes back).
    """
    try:
        message = QUEUE_MESSAGE.validate_json(record.body)
    except ValidationError:
        message = None
    if isinstance(message, JobBatchMessage | JobSweepMessage):
        failed = dead_letter_service().give_up_chunk(message)
        metrics.add_metric(name="BatchItemsExhausted", unit="Count", value=failed)
        return
    if isinstance(message, JobSubmitMessage):
        if dead_letter_service().give_up_submission(message):
            metrics.add_metric(name="RequestsExhausted", unit="Count", value=1)
        return
    request_id = request_id_of(record.body)
    if request_id is None:
        logger.error("unreadable dead letter", extra={"message_id": record.message_id})
        metrics.add_metric(name="UnreadableDeadLetters", unit="Count", value=1)
        return
    if dead_letter_service().give_up(request_id):
        metrics.add_metric(name="RequestsExhausted", unit="Count", value=1)


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    """Process a batch of dead letters."""
    return process_partial_response(
        event=event, record_handler=record_handler, processor=batch_processor(), context=context
    )
