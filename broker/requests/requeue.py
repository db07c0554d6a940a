"""Repair of an accepted request whose queue message was lost.

The API writes a request record (ACCEPTED, no attempt yet) and then sends its message. A Lambda
killed between the two leaves a record nobody will ever work on. The sweep finds such records
in the attention index and sends their message again, rebuilt from the record alone (here).

A duplicate message is harmless by design: the worker's ``mark_dispatched``, the conditional
job moves and the head-node agent's de-duplication by the token in the Slurm comment make a
second delivery a no-op. Only single-message kinds can be rebuilt: a batch's items (their
specs) live only in its chunk messages, so a batch is not re-sent; cluster operations go to
their own queue and are not handled here.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from broker.jobs.models import JobCancelMessage, JobOutputMessage, JobSubmitMessage
from broker.requests.models import RequestRecord
from broker.requests.states import RequestState

SingleMessage = JobSubmitMessage | JobCancelMessage | JobOutputMessage


def message_of(record: RequestRecord) -> SingleMessage | None:
    """The queue message the API sent for ``record``, rebuilt from the record alone.

    Args:
        record: a request record.

    Returns:
        The message equal to the one the API built at accept, or None for a kind that cannot
        be rebuilt (``job.batch``, cluster operations) or a record missing what its kind needs
        (its user included).
    """
    request_id, owner, cluster, user = record.request_id, record.owner, record.cluster, record.user
    if user is None:
        return None  # accepted without a user: nothing may act on it (no default user)
    if record.kind == "job.submit" and record.spec is not None:
        return JobSubmitMessage(
            request_id=request_id, owner=owner, cluster=cluster, user=user, spec=record.spec
        )
    if record.kind == "job.cancel" and record.job_id is not None:
        return JobCancelMessage(
            request_id=request_id, owner=owner, cluster=cluster, user=user, job_id=record.job_id
        )
    if record.kind == "job.output" and record.job_id is not None and record.query is not None:
        return JobOutputMessage(
            request_id=request_id, owner=owner, cluster=cluster, user=user,
            job_id=record.job_id, query=record.query,
        )  # fmt: skip
    # job.batch: not re-sent (its items' specs are only in its messages); cluster.*: other queue.
    return None


def due_for_requeue(record: RequestRecord, now: datetime, after: timedelta) -> bool:
    """Whether ``record`` looks like an accept whose message was lost, and is due a re-send.

    Still ACCEPTED with no attempt, accepted more than ``after`` ago, and not re-sent within
    ``after`` (the store's claim checks the last part again, conditionally).
    """
    stale = now - after
    return (
        record.state is RequestState.ACCEPTED
        and record.attempts == 0
        and record.created_at < stale
        and (record.requeued_at is None or record.requeued_at < stale)
    )
