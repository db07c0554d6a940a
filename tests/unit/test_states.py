"""The request state machine: forward only, nothing leaves a final state."""

from __future__ import annotations

import pytest

from broker.requests.states import TRANSITIONS, RequestState, can_transition, sources_of

FINAL = [RequestState.SUCCEEDED, RequestState.FAILED, RequestState.CANCELLED]


@pytest.mark.parametrize("final", FINAL)
@pytest.mark.parametrize("target", list(RequestState))
def test_no_transition_leaves_a_final_state(final: RequestState, target: RequestState) -> None:
    # GIVEN a request in a final state
    # WHEN any move is attempted
    # THEN it is refused
    assert not can_transition(final, target)


def test_dispatched_never_goes_back_to_accepted() -> None:
    # GIVEN a dispatched request / WHEN it would move back / THEN the table refuses
    assert not can_transition(RequestState.DISPATCHED, RequestState.ACCEPTED)


def test_a_retry_of_dispatched_work_is_allowed() -> None:
    # GIVEN a dispatched request whose message is delivered again
    # WHEN a worker takes it again
    # THEN DISPATCHED -> DISPATCHED is legal (it counts an attempt)
    assert can_transition(RequestState.DISPATCHED, RequestState.DISPATCHED)


def test_only_final_states_are_final() -> None:
    # GIVEN every state / THEN exactly SUCCEEDED, FAILED, CANCELLED are final, with no exits
    assert {s for s in RequestState if s.final} == set(FINAL)
    assert all(not TRANSITIONS[s] for s in FINAL)


def test_sources_of_failed_are_the_in_progress_states() -> None:
    # GIVEN the table / WHEN asking where FAILED can come from
    # THEN only the in-progress states (used in the DynamoDB condition)
    assert sources_of(RequestState.FAILED) == {
        RequestState.ACCEPTED,
        RequestState.DISPATCHED,
        RequestState.IN_PROGRESS,
    }
