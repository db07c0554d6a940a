"""``submit_many``: any number of jobs through ``jobs:batch`` calls, retried without duplicates.

The specs are cut into batches of at most 10,000 items and 5 MiB of body (the API's limits),
sent by a bounded pool of threads. Each batch gets its own ``Idempotency-Key`` before its first
attempt and keeps it across retries: a batch whose 202 was lost (connection dropped after the
API accepted it) is replayed by the API with the same request id, never accepted twice.
Throttling (429), server errors (5xx), a duplicate still in progress (409) and dropped
connections are retried by tenacity with capped exponential back-off, or after ``Retry-After``.
Every item comes back with an outcome: accepted (with its job id), rejected (its fields), or
failed (its batch could not be sent; with the last error). Specs are checked against the API's
own :class:`JobSpec` first, so an invalid item is rejected before anything is sent.
"""

from __future__ import annotations

import json
import random
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import tenacity
from pydantic import ValidationError as PydanticValidationError

from broker.batches.models import MAX_BATCH_BODY_BYTES, MAX_BATCH_ITEMS, BatchAccepted
from broker.client.errors import ApiError, ClientError, is_retryable
from broker.client.polling import Backoff, Sleep, WaitBackoffOrRetryAfter
from broker.jobs.models import MAX_SCRIPT_BYTES, JobSpec
from broker.schema import dump

ItemStatus = Literal["accepted", "rejected", "failed"]
#: Bytes of ``{"jobs": [], "atomic": false, "pack": true}`` and a margin, kept out of each
#: batch's budget.
_ENVELOPE_BYTES = 64


@dataclass(frozen=True)
class ItemResult:
    """The outcome of one spec, by its index in the caller's sequence."""

    index: int
    status: ItemStatus
    job_id: str | None = None
    batch_request_id: str | None = None
    error_code: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class BatchOutcome:
    """One ``jobs:batch`` call: its items (indexes in the caller's sequence, in the order sent),
    its Idempotency-Key, how many attempts it took, and its answer or its last error."""

    indexes: list[int]
    idempotency_key: str
    attempts: int
    accepted: BatchAccepted | None = None
    error: ClientError | None = None

    @property
    def size(self) -> int:
        """Items sent in this batch."""
        return len(self.indexes)


@dataclass
class BulkResult:
    """Every item's outcome, in the caller's order, and the batches that carried them."""

    items: list[ItemResult]
    batches: list[BatchOutcome]

    def count(self, status: ItemStatus) -> int:
        """How many items ended with ``status``."""
        return sum(1 for item in self.items if item.status == status)

    @property
    def request_ids(self) -> list[str]:
        """The accepted batches' request ids (poll them for the items' progress in Slurm)."""
        return [b.accepted.request_id for b in self.batches if b.accepted is not None]


def split(
    bodies: Sequence[bytes],
    *,
    max_items: int = MAX_BATCH_ITEMS,
    max_bytes: int = MAX_BATCH_BODY_BYTES,
) -> Iterator[tuple[int, int]]:
    """(start, stop) ranges of the serialized specs, each within both limits.

    An item too big for any batch still goes alone: the API answers 413 for it, and that
    becomes its outcome.
    """
    budget = max_bytes - _ENVELOPE_BYTES
    start, size = 0, 0
    for i, body in enumerate(bodies):
        cost = len(body) + 1  # the comma
        if i > start and (i - start >= max_items or size + cost > budget):
            yield start, i
            start, size = i, 0
        size += cost
    if start < len(bodies):
        yield start, len(bodies)


Post = Callable[[bytes, str], BatchAccepted]


def check(index: int, spec: JobSpec | dict[str, Any]) -> tuple[bytes | None, ItemResult | None]:
    """The item's JSON, or its rejection: the API's own model checks it before anything is sent."""
    try:
        model = spec if isinstance(spec, JobSpec) else JobSpec.model_validate(spec)
    except PydanticValidationError as exc:
        errors = [
            {
                "field": ".".join(["body", "jobs", str(index), *map(str, e["loc"])]),
                "message": e["msg"],
                "type": e["type"],
            }
            for e in exc.errors()
        ]
        return None, ItemResult(index, "rejected", error_code="VALIDATION_ERROR", errors=errors)
    if len(model.script.encode()) > MAX_SCRIPT_BYTES:
        error = {
            "field": f"body.jobs.{index}.script",
            "message": "over 64 KiB",
            "type": "too_large",
        }
        return None, ItemResult(index, "rejected", error_code="PAYLOAD_TOO_LARGE", errors=[error])
    return json.dumps(dump(model), separators=(",", ":")).encode(), None


def submit_many(
    post: Post,
    specs: Sequence[JobSpec | dict[str, Any]],
    *,
    concurrency: int = 4,
    max_items: int = MAX_BATCH_ITEMS,
    max_bytes: int = MAX_BATCH_BODY_BYTES,
    max_attempts: int = 8,
    backoff: Backoff | None = None,
    sleep: Sleep | None = None,
    rng: random.Random | None = None,
    on_batch: Callable[[BatchOutcome], None] | None = None,
    pack: bool = False,
) -> BulkResult:
    """Send ``specs`` in batches; ``post(body, idempotency_key)`` makes one ``jobs:batch`` call
    (with ``"pack": true`` if ``pack``).

    Each spec is validated with :class:`JobSpec` first: an invalid one is rejected here and
    never sent. Returns every item's outcome; never raises for a batch's failure (its items
    say so).
    """
    backoff = backoff or Backoff(first=0.5, cap=20.0)
    rng = rng or random.Random()  # noqa: S311 - jitter, not security
    lock = threading.Lock()
    results: dict[int, ItemResult] = {}
    bodies: list[bytes] = []
    indexes: list[int] = []
    for index, spec in enumerate(specs):
        body, rejected = check(index, spec)
        if rejected is not None:
            results[index] = rejected
        elif body is not None:
            bodies.append(body)
            indexes.append(index)
    ranges = list(split(bodies, max_items=max_items, max_bytes=max_bytes))
    run = uuid.uuid4().hex[:16]

    def send(number: int, start: int, stop: int) -> BatchOutcome:
        key = f"hpcb-{run}-{number}"
        tail = b'],"atomic":false,"pack":true}' if pack else b'],"atomic":false}'
        body = b'{"jobs":[' + b",".join(bodies[start:stop]) + tail
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_retryable),
            wait=WaitBackoffOrRetryAfter(backoff, rng),
            stop=tenacity.stop_after_attempt(max_attempts),
            sleep=sleep or tenacity.nap.sleep,
            reraise=True,
        )
        attempts = 0

        def attempt() -> BatchAccepted:
            nonlocal attempts
            attempts += 1
            return post(body, key)

        accepted: BatchAccepted | None = None
        error: ClientError | None = None
        try:
            accepted = retrying(attempt)
        except ClientError as exc:
            error = exc
        outcome = BatchOutcome(indexes[start:stop], key, attempts, accepted, error)
        if on_batch is not None:
            with lock:
                on_batch(outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="hpcb") as pool:
        futures = [pool.submit(send, n, a, b) for n, (a, b) in enumerate(ranges)]
        batches = [f.result() for f in futures]
    for batch in batches:
        for item in _items(batch):
            results[item.index] = item
    return BulkResult(items=[results[i] for i in range(len(specs))], batches=batches)


def _items(batch: BatchOutcome) -> list[ItemResult]:
    """Each item of one batch, with its outcome."""
    if batch.accepted is None:
        error = batch.error
        code = error.code if isinstance(error, ApiError) else type(error).__name__
        by_position = _fields_by_index(error)
        return [
            ItemResult(
                index=index,
                status="failed",
                error_code=code,
                errors=by_position.get(position, []) or [{"message": str(error)}],
            )
            for position, index in enumerate(batch.indexes)
        ]
    accepted = batch.accepted
    rejected = {r.index: [f.model_dump() for f in r.fields] for r in accepted.rejected}
    items = []
    for position, index in enumerate(batch.indexes):
        if position in rejected:
            items.append(
                ItemResult(
                    index=index,
                    status="rejected",
                    batch_request_id=accepted.request_id,
                    error_code="VALIDATION_ERROR",
                    errors=rejected[position],
                )
            )
        else:
            items.append(
                ItemResult(
                    index=index,
                    status="accepted",
                    job_id=f"{accepted.job_id_prefix}{position:06x}",
                    batch_request_id=accepted.request_id,
                )
            )
    return items


def _fields_by_index(error: ClientError | None) -> dict[int, list[dict[str, Any]]]:
    """A rejected batch's field errors (``body.jobs.17.partition``), by item index."""
    found: dict[int, list[dict[str, Any]]] = {}
    if not isinstance(error, ApiError):
        return found
    for item in error.fields:
        parts = str(item.get("field", "")).split(".")
        if len(parts) > 2 and parts[:2] == ["body", "jobs"] and parts[2].isdigit():
            found.setdefault(int(parts[2]), []).append(item)
    return found
