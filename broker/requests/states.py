"""Request states and their transition table.

A request moves forward only: ACCEPTED -> DISPATCHED -> SUCCEEDED | FAILED, or from ACCEPTED
straight to a final state (e.g. a permanent error before dispatch); a long cluster operation
passes DISPATCHED -> IN_PROGRESS (ParallelCluster accepted it) -> SUCCEEDED | FAILED. A move
backwards or out of a final state is refused, so an at-least-once worker that runs twice can
never undo a result.
"""

from __future__ import annotations

from enum import StrEnum


class RequestState(StrEnum):
    """Lifecycle of a broker request (one API write)."""

    ACCEPTED = "ACCEPTED"
    """Validated, recorded and queued; no worker has taken it yet."""
    DISPATCHED = "DISPATCHED"
    """A worker took it and is running it on the cluster (may be retried)."""
    IN_PROGRESS = "IN_PROGRESS"
    """A long operation was accepted (a cluster create, update or delete): the sweep follows it
    and ends the request when the cluster's stack reaches a final status."""
    SUCCEEDED = "SUCCEEDED"
    """Done; the result holds what was produced (e.g. the Slurm job id)."""
    FAILED = "FAILED"
    """Ended without success; the error says why and whether it was transient."""
    CANCELLED = "CANCELLED"
    """Ended without running: its job was cancelled while the submission was still queued."""

    @property
    def final(self) -> bool:
        """Whether no further transition is allowed."""
        return self in _FINAL


_FINAL = frozenset({RequestState.SUCCEEDED, RequestState.FAILED, RequestState.CANCELLED})

#: The one transition table: from-state -> states it may move to.
TRANSITIONS: dict[RequestState, frozenset[RequestState]] = {
    RequestState.ACCEPTED: frozenset(
        {
            RequestState.DISPATCHED,
            RequestState.IN_PROGRESS,
            RequestState.SUCCEEDED,
            RequestState.FAILED,
            RequestState.CANCELLED,
        }
    ),
    # DISPATCHED -> DISPATCHED is a retry of the same work (attempts + 1).
    RequestState.DISPATCHED: frozenset(
        {
            RequestState.DISPATCHED,
            RequestState.IN_PROGRESS,
            RequestState.SUCCEEDED,
            RequestState.FAILED,
            RequestState.CANCELLED,
        }
    ),
    # Nothing re-dispatches or cancels an operation that the provider is carrying out.
    RequestState.IN_PROGRESS: frozenset({RequestState.SUCCEEDED, RequestState.FAILED}),
    RequestState.SUCCEEDED: frozenset(),
    RequestState.FAILED: frozenset(),
    RequestState.CANCELLED: frozenset(),
}


def can_transition(current: RequestState, new: RequestState) -> bool:
    """Return whether ``current -> new`` is allowed by the transition table."""
    return new in TRANSITIONS[current]


def sources_of(new: RequestState) -> frozenset[RequestState]:
    """Return every state from which ``new`` may be reached (used in conditional writes)."""
    return frozenset(s for s, targets in TRANSITIONS.items() if new in targets)
