"""The typed client against the local stack (moto + the real handlers + real Slurm).

Every API operation through its method; waits with back-off and Retry-After (call counts and
requested pauses, never timings); one shared poller for many job waits; ``submit_many`` with
injected 429/503 and dropped connections: every item accounted for, none twice in Slurm.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest

from broker.client import (
    BrokerClient,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
)
from broker.clusters import ClusterStatus
from broker.jobs.models import CancelResult, JobResult, JobSpec
from broker.jobs.records import JobState
from broker.local.stack import LocalStack
from tests.conftest import local_stack
from tests.integration.client_support import (
    ALICE,
    BOB,
    CLUSTER_CONFIG,
    FaultyTransport,
    RecordingSleep,
    cancel_named,
    dropped_after_answer,
    slurm_jobs_named,
    too_many,
    unavailable,
)

pytestmark = [pytest.mark.slurm, pytest.mark.integration]
HELLO = "#!/bin/bash\necho hello from the client\n"


@pytest.fixture(scope="module")
def stack(slurm: dict[str, str]) -> Iterator[LocalStack]:
    env = {"HPCB_SIMULATED_CLUSTER_SECONDS": "1", "HPCB_SWEEP_WINDOW_SECONDS": "0"}
    with local_stack(slurm, schedule_seconds=1, env=env) as running:
        yield running


@pytest.fixture
def alice(stack: LocalStack) -> BrokerClient:
    return BrokerClient(stack.api_url, principal=ALICE)


@pytest.fixture
def name() -> Iterator[str]:
    unique = f"cli-{uuid.uuid4().hex[:10]}"
    yield unique
    cancel_named(unique)


def test_a_job_round_trip_returns_the_apis_models(alice: BrokerClient, name: str) -> None:
    # GIVEN a typed spec / WHEN submitted and waited for
    accepted = alice.submit_job("local", JobSpec(script=HELLO, name=name))
    request = alice.wait(accepted.request_id, timeout=60)
    job = alice.wait_for_job("local", accepted.request_id, timeout=90)
    # THEN each answer is the API's own model, with the job's whole story
    assert request.state == "SUCCEEDED"
    assert isinstance(request.result, JobResult)
    assert (job.state, job.exit_code, job.slurm_job_id) == (
        JobState.COMPLETED,
        0,
        request.result.job_id,
    )
    # AND get_job, list_jobs and iter_jobs see it
    assert alice.get_job("local", accepted.request_id).job_id == accepted.request_id
    assert [j.job_id for j in alice.list_jobs("local", name=name).jobs] == [accepted.request_id]
    assert [j.job_id for j in alice.iter_jobs("local", name=name, limit=1)] == [accepted.request_id]
    # AND its output comes back typed
    output = alice.output("local", accepted.request_id, stream="stdout")
    assert output.parts[0].data == "hello from the client\n"


def test_cancel_of_a_held_job_and_a_second_cancel_conflicts(alice: BrokerClient, name: str) -> None:
    # GIVEN a held job in Slurm
    accepted = alice.submit_job("local", {"script": HELLO, "name": name, "hold": True})
    assert alice.wait(accepted.request_id, timeout=60).state == "SUCCEEDED"
    # WHEN it is cancelled
    cancel = alice.wait(alice.cancel_job("local", accepted.request_id).request_id, timeout=60)
    # THEN the cancel SUCCEEDED and the job ends CANCELLED
    assert isinstance(cancel.result, CancelResult)
    assert alice.wait_for_job("local", accepted.request_id, timeout=90).state == "CANCELLED"
    # AND a second cancel is a 409
    with pytest.raises(ConflictError):
        alice.cancel_job("local", accepted.request_id)


def test_errors_are_typed(alice: BrokerClient, stack: LocalStack) -> None:
    # GIVEN alice's request
    request_id = alice.submit_job("local", {"script": HELLO, "hold": True}).request_id
    # WHEN bob reads it / THEN NotFoundError (404)
    with pytest.raises(NotFoundError):
        BrokerClient(stack.api_url, principal=BOB).get_request(request_id)
    # WHEN an invalid spec is sent / THEN InvalidRequestError with the bad field
    with pytest.raises(InvalidRequestError) as info:
        alice.submit_job("local", {"script": HELLO, "nodes": 0})
    assert [f["field"] for f in info.value.fields] == ["body.nodes"]
    alice.cancel_job("local", request_id)


def test_a_batch_and_its_item_pages(alice: BrokerClient, name: str) -> None:
    # GIVEN three held jobs, one invalid / WHEN sent as one batch
    specs = [{"script": HELLO, "name": name, "hold": True}] * 2 + [{"script": "no shebang"}]
    accepted = alice.submit_batch("local", specs)
    final = alice.wait(accepted.request_id, timeout=60)
    # THEN two are accepted, one rejected, and the request pages its items
    assert (accepted.accepted, accepted.rejected_count) == (2, 1)
    assert final.counts == {"SUBMITTED": 2}
    page = alice.get_request(accepted.request_id, items_limit=10).item_page or []
    assert [i.job_id for i in page] == [f"{accepted.job_id_prefix}{i:06x}" for i in range(2)]


def test_a_cluster_round_trip(alice: BrokerClient) -> None:
    cluster = f"cli-{uuid.uuid4().hex[:8]}"
    # GIVEN a dry run / THEN it validates only
    dry = alice.wait(alice.create_cluster(cluster, CLUSTER_CONFIG, dryrun=True).request_id)
    assert dry.state == "SUCCEEDED"
    # WHEN the cluster is created and waited for
    created = alice.create_cluster(cluster, CLUSTER_CONFIG)
    view = alice.wait_for_cluster(cluster, "CREATE_COMPLETE", timeout=60)
    assert view.status is ClusterStatus.CREATE_COMPLETE
    assert alice.wait(created.request_id).state == "SUCCEEDED"
    # THEN it is listed, described, refreshed, its fleet stopped, it is updated
    assert cluster in [c.name for c in alice.list_clusters().clusters]
    assert alice.get_cluster(cluster).name == cluster
    assert alice.wait(alice.refresh_cluster(cluster).request_id).state == "SUCCEEDED"
    assert alice.wait(alice.set_fleet(cluster, "STOP_REQUESTED").request_id).state == "SUCCEEDED"
    update = alice.update_cluster(cluster, CLUSTER_CONFIG, dryrun=True)
    assert alice.wait(update.request_id).state == "SUCCEEDED"
    # AND once deleted, the wait ends DELETE_COMPLETE
    deleted = alice.delete_cluster(cluster)
    assert alice.wait_for_cluster(cluster, "DELETE_COMPLETE", timeout=60).status == (
        ClusterStatus.DELETE_COMPLETE
    )
    assert alice.wait(deleted.request_id).state == "SUCCEEDED"


def test_output_of_a_job_never_in_slurm_is_a_conflict(alice: BrokerClient) -> None:
    # GIVEN a job never submitted to Slurm (a dependency that does not exist)
    bad = {"script": HELLO, "dependency": [{"type": "afterok", "jobs": ["r" + "0" * 28]}]}
    job_id = alice.submit_job("local", bad).request_id
    assert alice.wait(job_id, timeout=60).state == "FAILED"
    # WHEN its output is asked for / THEN 409, typed
    with pytest.raises(ConflictError):
        alice.output("local", job_id, timeout=60)


def test_the_openapi_document_lists_the_routes(alice: BrokerClient) -> None:
    assert "/v1/clusters/{cluster}/jobs:batch" in alice.openapi()["paths"]


def test_wait_honours_retry_after_and_backs_off(stack: LocalStack, name: str) -> None:
    # GIVEN a transport that answers the first two request reads 429 Retry-After: 7
    def plan(method: str, url: str, _h: dict[str, str], n: int) -> object:
        return too_many("7") if method == "GET" and "/v1/requests/" in url and n <= 2 else None

    transport = FaultyTransport(plan=plan)  # type: ignore[arg-type]
    sleep = RecordingSleep()
    client = BrokerClient(stack.api_url, principal=ALICE, transport=transport, sleep=sleep)
    accepted = client.submit_job("local", {"script": HELLO, "name": name, "hold": True})
    # WHEN the request is waited for
    final = client.wait(accepted.request_id, timeout=60)
    # THEN it ends SUCCEEDED, the two 429s were retried after at least their 7 s each
    assert final.state == "SUCCEEDED"
    assert sleep.pauses[:2] == [7.0, 7.0]
    # AND later pauses follow the capped exponential back-off (never over the cap)
    assert all(p <= client.backoff.cap for p in sleep.pauses[2:])
    reads = transport.count(lambda r: r.startswith("GET") and "/v1/requests/" in r)
    assert reads == len(sleep.pauses) + 1


def test_many_job_waits_share_one_listing_per_round(stack: LocalStack, name: str) -> None:
    # GIVEN five short jobs, each waited for in its own thread through one client
    transport = FaultyTransport()
    client = BrokerClient(stack.api_url, principal=ALICE, transport=transport)
    ids = [
        client.submit_job("local", {"script": "#!/bin/bash\ntrue\n", "name": name}).request_id
        for _ in range(5)
    ]
    results: dict[str, str] = {}

    def wait(job_id: str) -> None:
        results[job_id] = client.wait_for_job("local", job_id, timeout=120).state.value

    threads = [threading.Thread(target=wait, args=(i,)) for i in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(150)
    # THEN every job completed
    assert results == dict.fromkeys(ids, "COMPLETED")
    # AND no job was read on its own: one listing call per round for the cluster
    assert transport.count(lambda r: "/jobs/r" in r) == 0
    listings = transport.count(lambda r: r.startswith("GET") and r.endswith("/jobs"))
    assert listings == client._monitor.rounds


def test_submit_many_survives_faults_without_duplicates(stack: LocalStack, name: str) -> None:
    # GIVEN 30 held jobs sent in batches of 10, where batch 0's first call gets a 503, batch 1's
    # first call is accepted but its answer lost (connection dropped), batch 2's gets a 429
    faults = {0: unavailable(), 1: dropped_after_answer(), 2: too_many("1")}
    calls_per_batch: dict[int, int] = {}

    def plan(method: str, url: str, headers: dict[str, str], _n: int) -> object:
        if not url.endswith("jobs:batch"):
            return None
        batch = int(headers["Idempotency-Key"].rsplit("-", 1)[1])
        calls_per_batch[batch] = calls_per_batch.get(batch, 0) + 1
        return faults.get(batch) if calls_per_batch[batch] == 1 else None

    transport = FaultyTransport(plan=plan)  # type: ignore[arg-type]
    sleep = RecordingSleep()
    client = BrokerClient(stack.api_url, principal=ALICE, transport=transport, sleep=sleep)
    specs = [{"script": "#!/bin/bash\ntrue\n", "name": name, "hold": True}] * 30
    # WHEN they are submitted with submit_many
    result = client.submit_many("local", specs, max_items=10, concurrency=3)
    # THEN every item is accepted, once, with its own job id
    assert result.count("accepted") == 30
    assert len({item.job_id for item in result.items}) == 30
    assert sorted(b.attempts for b in result.batches) == [2, 2, 2]
    # AND once the batches are done, Slurm holds exactly 30 jobs of that name, each once
    for request_id in result.request_ids:
        assert client.wait(request_id, timeout=120).counts == {"SUBMITTED": 10}
    comments = [comment for _, comment in slurm_jobs_named(name)]
    assert len(comments) == 30
    assert len(set(comments)) == 30
    # AND each retry reused its batch's Idempotency-Key
    batch_keys = [k for k in transport.keys if k]
    assert len(set(batch_keys)) == 3
    assert len(batch_keys) == 6
