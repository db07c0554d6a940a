"""Request store contract: the DynamoDB adapter (moto over HTTP) and the in-memory fake
obey the same conditional, monotonic rules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker.adapters.aws import client
from broker.adapters.dynamodb import DynamoRequestStore
from broker.errors import ConflictError, NotFoundError
from broker.models import ErrorInfo, JobResult, JobSpec, RequestRecord, new_request_id, utcnow
from broker.ports import RequestStore
from broker.states import RequestState
from tests.conftest import AwsResources
from tests.fakes import InMemoryRequestStore


@pytest.fixture(params=["dynamodb", "memory"])
def store(request: pytest.FixtureRequest) -> Iterator[RequestStore]:
    if request.param == "memory":
        yield InMemoryRequestStore()
        return
    resources: AwsResources = request.getfixturevalue("aws_resources")
    yield DynamoRequestStore(client("dynamodb"), resources.ref("RequestsTable"))


def accepted() -> RequestRecord:
    now = utcnow()
    return RequestRecord(
        request_id=new_request_id(),
        kind="job.submit",
        owner="arn:aws:iam::123456789012:user/alice",
        cluster="local",
        state=RequestState.ACCEPTED,
        created_at=now,
        updated_at=now,
        spec=JobSpec(script="#!/bin/sh\necho 'quotes' \"and\" $(subshells)\n", name="j1"),
    )


def test_created_record_reads_back_identically(store: RequestStore) -> None:
    # GIVEN a new record / WHEN created and read / THEN every field round-trips
    record = accepted()
    store.create(record)
    assert store.get(record.request_id) == record


def test_creating_the_same_id_twice_conflicts(store: RequestStore) -> None:
    # GIVEN an existing record / WHEN created again / THEN conflict (attribute_not_exists)
    record = accepted()
    store.create(record)
    with pytest.raises(ConflictError):
        store.create(record)


def test_reading_an_unknown_id_is_not_found(store: RequestStore) -> None:
    # GIVEN nothing / WHEN reading / THEN not found
    with pytest.raises(NotFoundError):
        store.get(new_request_id())


def test_dispatch_counts_attempts_each_delivery(store: RequestStore) -> None:
    # GIVEN an accepted record / WHEN dispatched twice (a redelivery)
    record = accepted()
    store.create(record)
    store.mark_dispatched(record.request_id)
    second = store.mark_dispatched(record.request_id)
    # THEN it is DISPATCHED with two attempts
    assert second is not None
    assert (second.state, second.attempts) == (RequestState.DISPATCHED, 2)


def test_success_is_final_and_clears_the_retry_error(store: RequestStore) -> None:
    # GIVEN a dispatched record that saw a transient error
    record = accepted()
    store.create(record)
    store.mark_dispatched(record.request_id)
    store.record_retry(record.request_id, ErrorInfo(code="X", message="y", transient=True))
    assert store.get(record.request_id).error is not None
    # WHEN it succeeds
    assert store.record_success(record.request_id, JobResult(job_id="12", cluster="local"))
    # THEN it is SUCCEEDED with the job id and no error
    done = store.get(record.request_id)
    assert done.state is RequestState.SUCCEEDED
    assert done.result == JobResult(job_id="12", cluster="local")
    assert done.error is None


def test_nothing_moves_a_final_record(store: RequestStore) -> None:
    # GIVEN a succeeded record
    record = accepted()
    store.create(record)
    store.record_success(record.request_id, JobResult(job_id="12", cluster="local"))
    # WHEN a late failure, a late dispatch and a late retry note arrive
    failed = store.record_failure(
        record.request_id, ErrorInfo(code="X", message="y", transient=False)
    )
    dispatched = store.mark_dispatched(record.request_id)
    store.record_retry(record.request_id, ErrorInfo(code="X", message="y", transient=True))
    # THEN none of them changes it
    assert failed is False
    assert dispatched is None
    final = store.get(record.request_id)
    assert final.state is RequestState.SUCCEEDED
    assert final.error is None


def test_dispatching_an_unknown_request_is_not_found(store: RequestStore) -> None:
    # GIVEN no record / WHEN a worker dispatches it / THEN not found (not a silent create)
    with pytest.raises(NotFoundError):
        store.mark_dispatched(new_request_id())
