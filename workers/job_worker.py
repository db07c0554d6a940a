"""Job worker Lambda (``workers.job_worker.lambda_handler``): drains the requests queue.

Each SQS record is one request: a job submission, cancel or output fetch. Permanent errors are
recorded on the request (FAILED) and the record is acknowledged; transient errors shorten the
message's visibility (exponential back-off) and fail the record, so SQS delivers it again, and
after MaxReceiveCount moves it to the DLQ, where the DLQ worker marks the request FAILED.
Nothing is silently dropped.

Batch chunks drained together for one cluster share one head-node command, and so do single
submissions (``submit_together``); each message still ends on its own (its record fails or not).
"""

from __future__ import annotations

import json
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
from broker.errors import TransientError
from broker.jobs.execution import Outcome
from broker.jobs.models import JobSubmitMessage
from broker.observability import logger, metrics, tracer
from broker.requests.models import QUEUE_MESSAGE, AnyMessage
from broker.settings import job_worker_settings
from broker.wiring import dispatcher, request_queue
from workers.retrying import batch_processor, run_with_backoff

#: A message that can share a head-node command with others of its kind and cluster (a sweep's
#: chunk goes with batch chunks).
Grouped = JobBatchMessage | JobSweepMessage | JobSubmitMessage
#: Per message id, a message of a grouped submission (as parsed once) and how it ended.
Ends = dict[str, "tuple[Grouped, Outcome | TransientError]"]
#: Jobs per head-node command when chunks are grouped. Commands for one head node run one at a
#: time (the agent's lock, which a command waits for at most 90 s), and the SQS mapping runs
#: five invocations at once: four commands of 1,000 jobs at 3-13 ms a job (idle to a loaded
#: slurmctld) fit in that wait. With 3,000, commands waited past it and came back as retries.
MAX_GROUPED_JOBS = 1000
#: A message delivered this many times already is submitted by its own head-node command: a
#: command fails for all the messages it carries, so one poison message (a job that always
#: fails the command) would otherwise take the healthy messages grouped with it to the DLQ
#: (bisecting, as Lambda's BisectBatchOnFunctionError does for streams).
SOLO_AFTER_RECEIVES = 3


@tracer.capture_method(capture_response=False)
def record_handler(record: SQSRecord, ends: Ends | None = None) -> None:
    """Dispatch one queued request (raises to mark the record failed)."""
    grouped = (ends or {}).pop(record.message_id, None)
    try:
        message = grouped[0] if grouped else QUEUE_MESSAGE.validate_json(record.body)
    except ValidationError:
        # Cannot be processed, ever; fail it so it reaches the DLQ and stays inspectable.
        logger.exception("malformed queue message", extra={"message_id": record.message_id})
        raise
    logger.append_keys(request_id=message.request_id, cluster=message.cluster)
    try:
        _dispatch(record, message, None if grouped is None else grouped[1])
    finally:
        # Keys persist across records and invocations; keep each record's logs its own.
        logger.remove_keys(["request_id", "cluster"])


def _dispatch(record: SQSRecord, message: AnyMessage, end: Outcome | TransientError | None) -> None:
    settings = job_worker_settings()
    backoff = (settings.retry_base_seconds, settings.retry_max_seconds)
    handle = (lambda: dispatcher().handle(message)) if end is None else (lambda: _replay(end))
    run_with_backoff(record, message.kind, handle, request_queue, backoff)


def _replay(end: Outcome | TransientError) -> Outcome:
    """The end a message already had in a grouped submission (raised again if an error)."""
    if isinstance(end, TransientError):
        raise end
    return end


def submit_together(records: list[dict[str, Any]]) -> Ends:
    """Submit what this SQS batch holds per cluster in as few head-node commands as possible:
    its batch chunks together, and its single submissions together (at most MAX_GROUPED_JOBS
    jobs per command); message id -> how each message ended.

    Messages not grouped (cancels, output reads, or alone of their kind for their cluster) are
    left to the record handler; so are single submissions when HPCB_COALESCE_SUBMISSIONS is
    false, and messages delivered SOLO_AFTER_RECEIVES times already. Should grouping itself
    fail unexpectedly, every message is handled on its own (each step is idempotent, so
    nothing is submitted twice).
    """
    coalesce = job_worker_settings().coalesce_submissions
    groups: dict[tuple[str, str], list[list[tuple[str, Grouped]]]] = {}
    for raw in records:
        try:
            message = QUEUE_MESSAGE.validate_json(raw.get("body", ""))
        except ValidationError:
            continue  # the record handler fails it and it goes to the DLQ
        if not isinstance(message, JobBatchMessage | JobSweepMessage | JobSubmitMessage):
            continue
        if isinstance(message, JobSubmitMessage) and not coalesce:
            continue
        if int(raw.get("attributes", {}).get("ApproximateReceiveCount", 1)) >= SOLO_AFTER_RECEIVES:
            continue  # on its own from now on (see SOLO_AFTER_RECEIVES)
        kind = "job.submit" if isinstance(message, JobSubmitMessage) else "job.batch"
        runs = groups.setdefault((message.cluster, kind), [[]])
        if sum(_jobs_in(m) for _, m in runs[-1]) + _jobs_in(message) > MAX_GROUPED_JOBS:
            runs.append([])
        runs[-1].append((raw["messageId"], message))
    ends: Ends = {}
    for (_, kind), runs in groups.items():
        for run in (run for run in runs if len(run) > 1):
            jobs = sum(_jobs_in(m) for _, m in run)
            logger.info("submitting together", extra={"kind": kind, "messages": len(run),
                                                      "jobs": jobs})  # fmt: skip
            try:
                answers = _submit_run([message for _, message in run])
            except Exception:
                logger.exception("grouped submission failed; handling its messages one by one")
                continue
            ends.update(
                (message_id, (message, end))
                for (message_id, message), end in zip(run, answers, strict=True)
            )
    return ends


def _jobs_in(message: Grouped) -> int:
    """What a message weighs in a command: its jobs (a sweep's chunk: its arrays, about one
    sbatch per 1,000 tasks)."""
    if isinstance(message, JobSweepMessage):
        return len(message.indexes) // 1000 + 1
    return len(message.items) if isinstance(message, JobBatchMessage) else 1


def _submit_run(run: list[Grouped]) -> list[Outcome | TransientError]:
    """One agent call for a run of messages of one kind and cluster."""
    chunks = [m for m in run if isinstance(m, JobBatchMessage | JobSweepMessage)]
    singles = [m for m in run if isinstance(m, JobSubmitMessage)]
    if chunks:
        return dispatcher().handle_chunks(chunks)
    return dispatcher().handle_submits(singles)


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    """Process an SQS batch, reporting partial failures (submissions grouped per cluster)."""
    ends = submit_together(event.get("Records", []))
    return process_partial_response(
        event=event,
        record_handler=lambda record: record_handler(record, ends),
        processor=batch_processor(),
        context=context,
    )


def request_id_of(body: str) -> str | None:
    """The request id of a (possibly malformed) message body, if it has one."""
    try:
        value = json.loads(body).get("request_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None
