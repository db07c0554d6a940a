"""The RequestStore port on DynamoDB: request items and their conditional state changes.

Owns the request item (``REQ#<id>``, layout in ``table``). Every state change is conditional on
the states it may come from, read from the transition table (``broker.requests.states``): two
deliveries of the same message, overlapping sweeps or a late retry can never move a request
backwards or out of a final state. :func:`move_request` is that one move; the cluster store uses
it too (``mark_in_progress``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from broker.adapters.dynamodb.table import Table, TableStore, instant, record_of, request_item
from broker.adapters.dynamodb.table import request_key as key
from broker.errors import ConflictError
from broker.requests.models import RequestRecord, RequestResult
from broker.requests.states import RequestState, sources_of
from broker.schema import ErrorInfo, dump, utcnow


class DynamoRequestStore(TableStore):
    """RequestStore on DynamoDB."""

    def create(self, record: RequestRecord) -> None:
        """Write a new request; the id must not exist (``attribute_not_exists``)."""
        self._table.put_new(request_item(record), f"request {record.request_id}")

    create_request = create

    def get(self, request_id: str) -> RequestRecord:
        """Read a request (strongly consistent: a GET right after a POST sees it)."""
        return record_of(self._table.get(key(request_id), f"request {request_id}"))

    def mark_dispatched(self, request_id: str) -> RequestRecord | None:
        """ACCEPTED|DISPATCHED -> DISPATCHED, attempts + 1; None when already final."""
        updated = move_request(
            self._table, request_id, RequestState.DISPATCHED, add={"attempts": 1}
        )
        if updated is None:
            current = self.get(request_id)  # raises NotFoundError when absent
            if current.state.final:
                return None
            raise ConflictError(f"request {request_id} is {current.state}, cannot dispatch")
        return updated

    def record_success(self, request_id: str, result: RequestResult) -> bool:
        """-> SUCCEEDED with the result, clearing any retry error; False if already final."""
        moved = move_request(
            self._table, request_id, RequestState.SUCCEEDED,
            sets={"result": dump(result)}, remove=("error",),
        )  # fmt: skip
        return moved is not None

    def record_failure(self, request_id: str, error: ErrorInfo) -> bool:
        """-> FAILED with the error; False if already final."""
        moved = move_request(
            self._table, request_id, RequestState.FAILED, sets={"error": dump(error)}
        )
        return moved is not None

    def record_cancelled(self, request_id: str) -> bool:
        """-> CANCELLED; False if already final."""
        return move_request(self._table, request_id, RequestState.CANCELLED) is not None

    def record_retry(self, request_id: str, error: ErrorInfo) -> None:
        """Remember the last transient error while the request is still in progress."""
        self._table.update(
            key(request_id),
            sets={"error": dump(error), "updated_at": utcnow().isoformat()},
            condition="#state IN (:c0, :c1)",
            condition_values={
                ":c0": RequestState.ACCEPTED.value,
                ":c1": RequestState.DISPATCHED.value,
            },
            what="record retry",
        )

    def claim_requeue(self, request_id: str, now: datetime, stale_before: datetime) -> bool:
        """Set ``requeued_at`` if the request is still ACCEPTED and not re-sent since
        ``stale_before``; False when another sweep claimed it, or a worker took it meanwhile.

        Why this condition: the attention index is read eventually consistently and sweeps may
        overlap, so the sweep's own check proves nothing; this write is the one place where
        "still waiting for its first delivery, and nobody re-sent it lately" is decided.
        ``state = ACCEPTED`` also fails on a missing item (no ``state``), so nothing is created.
        Both times are written in one fixed-width UTC form, so comparing strings compares times.
        """
        never_or_long_ago = "attribute_not_exists(requeued_at) OR requeued_at < :c1"
        item = self._table.update(
            key(request_id),
            sets={"requeued_at": instant(now)},
            condition=f"#state = :c0 AND ({never_or_long_ago})",
            condition_values={":c0": RequestState.ACCEPTED.value, ":c1": instant(stale_before)},
            what="claim request re-send",
        )
        return item is not None

    def clear_request_notification(self, request_id: str, state: str) -> bool:
        """The request's final event is published: it leaves the attention index.

        Conditional on the pending mark still naming ``state``: a later event is not cleared.
        """
        return (
            self._table.update(
                key(request_id),
                remove=("notify_pending", "gsi2pk", "gsi2sk"),
                condition="notify_pending = :c0",
                condition_values={":c0": state},
                what="clear request notification",
            )
            is not None
        )


def move_request(
    table: Table,
    request_id: str,
    new: RequestState,
    *,
    sets: Mapping[str, Any] | None = None,
    add: Mapping[str, int] | None = None,
    remove: tuple[str, ...] = (),
) -> RequestRecord | None:
    """Conditionally move a request to ``new``; None when the condition fails.

    The condition lists exactly the states ``new`` may come from, taken from the
    transition table, so the table is the single source of truth for which moves are legal.
    ``attribute_exists(pk)`` keeps an update from creating a request that is not there.
    A final move also marks the request's notification pending.
    """
    sources = sorted(s.value for s in sources_of(new))
    values = {f":c{i}": s for i, s in enumerate(sources)}
    all_sets: dict[str, Any] = {"state": new.value, "updated_at": utcnow().isoformat()}
    all_sets.update(sets or {})
    if new.final:
        all_sets["notify_pending"] = new.value
    item = table.update(
        key(request_id),
        sets=all_sets,
        add=add,
        remove=remove,
        condition=f"attribute_exists(pk) AND #state IN ({', '.join(values)})",
        condition_values=values,
        what=f"move request to {new.value}",
    )
    return None if item is None else record_of(item)
