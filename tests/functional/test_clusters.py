"""Cluster lifecycle on real SQS/DynamoDB/SNS shapes (moto over HTTP), with a FAKE pcluster.

The API handler takes genuine API Gateway events; the cluster worker gets its SQS batch as the
local stack's pollers build it; the sweep is the real Sweeper with the cluster follower. Only
provisioning is faked (FakePclusterProvider, FakeStackReader): ParallelCluster cannot run here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from werkzeug.test import Client, TestResponse

from broker.adapters.aws import client
from broker.adapters.dynamodb import DynamoStore
from broker.adapters.sqs import SqsClusterQueue, SqsRequestQueue
from broker.api import services as api_services
from broker.api.handler import lambda_handler
from broker.clusters import (
    ClusterInfo,
    ClusterStatus,
    ComputeFleetStatus,
    ConfigurationRejectedError,
    ProviderAnswer,
    ValidationMessage,
)
from broker.clusters.service import ClusterGate, ClusterService
from broker.clusters.worker import ClusterWorker as ClusterWorkerService
from broker.errors import ClusterNotFoundError, ConflictError, ThrottledError
from broker.jobs.accept import RequestService
from broker.local.apigw import ApiGatewayApp, ApiRoute
from broker.local.context import LambdaContext
from broker.local.pollers import build_sqs_event
from broker.notifications.announcer import Announcer, ClusterAnnouncer
from broker.notifications.events import ClusterEvent, RequestEvent
from broker.requests.states import RequestState
from broker.settings import cluster_worker_settings
from broker.sweep.clusters import ClusterFollower
from broker.sweep.report import SweepReport
from broker.sweep.status import Sweeper
from tests.cluster_fakes import FakePclusterProvider, FakeStackReader, info
from tests.conftest import REGION, AwsResources
from tests.fakes import EveryoneAs, FakeDirectory, RecordingNotifier, ScriptedRunner
from workers import cluster_worker

ALICE = "arn:aws:iam::123456789012:user/alice"
BOB = "arn:aws:iam::123456789012:user/bob"
CONFIG = (
    "Image:\n  Os: alinux2\nHeadNode:\n  InstanceType: t3.micro\nScheduling:\n  Scheduler: slurm\n"
)
SCRIPT = "#!/bin/bash\necho hi\n"


@dataclass
class World:
    resources: AwsResources
    store: DynamoStore
    provider: FakePclusterProvider
    stacks: FakeStackReader
    notifier: RecordingNotifier
    sweeper: Sweeper
    http: Client
    sqs: Any

    def post(self, path: str, body: Any, who: str = ALICE) -> TestResponse:
        return self.http.post(path, json=body, headers={"X-Hpcb-Local-Principal": who})

    def put(self, path: str, body: Any, who: str = ALICE) -> TestResponse:
        return self.http.put(path, json=body, headers={"X-Hpcb-Local-Principal": who})

    def get(self, path: str, who: str = ALICE) -> TestResponse:
        return self.http.get(path, headers={"X-Hpcb-Local-Principal": who})

    def delete(self, path: str, who: str = ALICE) -> TestResponse:
        return self.http.delete(path, headers={"X-Hpcb-Local-Principal": who})

    def work(self, logical_id: str = "ClusterQueue") -> dict[str, Any]:
        """Receive one SQS batch of the queue and give it to the worker's handler."""
        url = self.resources.provisioned.queue_url(logical_id)
        answer = self.sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, AttributeNames=["All"]
        )
        event = build_sqs_event(
            answer.get("Messages", []),
            queue_arn=self.resources.provisioned.attribute(logical_id, "Arn"),
            region=REGION,
        )
        handler = cluster_worker.dlq_handler if logical_id == "ClusterDLQ" else None
        result: dict[str, Any] = (handler or cluster_worker.lambda_handler)(event, context())
        for record in event["Records"]:
            failed = {f["itemIdentifier"] for f in result["batchItemFailures"]}
            if record["messageId"] not in failed:
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=record["receiptHandle"])
        return result

    def request(self, request_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self.get(f"/v1/requests/{request_id}").get_json()
        return body

    def cluster_events(self) -> list[ClusterEvent]:
        return [e for e in self.notifier.published if isinstance(e, ClusterEvent)]

    def request_events(self) -> list[RequestEvent]:
        return [e for e in self.notifier.published if isinstance(e, RequestEvent)]


def context() -> LambdaContext:
    return LambdaContext.for_invocation(
        function_name="ClusterWorkerFunction", timeout_s=300, memory_mb=2048,
        region=REGION, account_id="123456789012",
    )  # fmt: skip


@pytest.fixture
def world(aws_resources: AwsResources, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setenv("HPCB_TABLE_NAME", aws_resources.ref("RequestsTable"))
    monkeypatch.setenv("HPCB_TOPIC_ARN", aws_resources.ref("NotificationsTopic"))
    monkeypatch.setenv("HPCB_RETRY_BASE_SECONDS", "0")
    cluster_worker_settings.cache_clear()
    sqs = client("sqs")
    store = DynamoStore(client("dynamodb"), aws_resources.ref("RequestsTable"))
    provider, stacks, notifier = FakePclusterProvider(), FakeStackReader(), RecordingNotifier()
    announcer, clusters = Announcer(store, notifier), ClusterAnnouncer(store, notifier)
    worker = ClusterWorkerService(store, provider, announcer, clusters)
    monkeypatch.setattr(cluster_worker, "cluster_worker", lambda: worker)
    monkeypatch.setattr(cluster_worker, "request_queue", lambda: SqsRequestQueue(sqs, None))
    service = ClusterService(
        store, SqsClusterQueue(sqs, aws_resources.provisioned.queue_url("ClusterQueue")), stacks
    )
    jobs = RequestService(
        store,
        SqsRequestQueue(sqs, aws_resources.provisioned.queue_url("RequestsQueue")),
        FakeDirectory(names=frozenset({"local", "alpha"})),
        cluster_gate=ClusterGate(store),
        users=EveryoneAs(),
    )
    monkeypatch.setattr(api_services, "cluster_service", lambda: service)
    monkeypatch.setattr(api_services, "request_service", lambda: jobs)
    sweeper = Sweeper(
        store, FakeDirectory(), ScriptedRunner().runner_for, announcer,
        follower=ClusterFollower(store, stacks, announcer, clusters),
    )  # fmt: skip
    route = ApiRoute(
        resource="/{proxy+}", method="ANY", handler=lambda_handler, function_name="ApiFunction"
    )
    http = Client(ApiGatewayApp([route], default_principal=ALICE))
    return World(aws_resources, store, provider, stacks, notifier, sweeper, http, sqs)


def create(world: World, name: str = "alpha", **extra: Any) -> str:
    answer = world.post("/v1/clusters", {"name": name, "configuration": CONFIG, **extra})
    assert answer.status_code == 202, answer.get_json()
    request_id: str = answer.get_json()["request_id"]
    return request_id


def created(world: World, name: str = "alpha") -> str:
    """A cluster taken to CREATE_COMPLETE through the whole path."""
    request_id = create(world, name)
    world.provider.answers.append(ProviderAnswer(info=info(name)))
    world.work()
    world.stacks.set(name, ClusterStatus.CREATE_COMPLETE)
    world.sweeper.sweep()
    world.notifier.published.clear()
    return request_id


# -- create -----------------------------------------------------------------------------------


def test_create_goes_in_progress_then_sweep_completes_it_with_one_event(world: World) -> None:
    # GIVEN a create accepted by the API
    answer = world.post("/v1/clusters", {"name": "alpha", "configuration": CONFIG})
    assert answer.status_code == 202
    request_id = answer.get_json()["request_id"]
    assert answer.headers["Location"] == f"/v1/requests/{request_id}"
    assert world.get("/v1/clusters/alpha").get_json()["status"] == "CREATE_IN_PROGRESS"
    # WHEN the worker runs it and pcluster accepts it
    world.provider.answers.append(ProviderAnswer(info=info("alpha")))
    assert world.work() == {"batchItemFailures": []}
    # THEN the request is IN_PROGRESS, the cluster followed
    assert world.request(request_id)["state"] == "IN_PROGRESS"
    # WHEN the sweep reads the stack still creating, then complete
    world.stacks.set("alpha", ClusterStatus.CREATE_IN_PROGRESS)
    world.sweeper.sweep()
    assert world.request(request_id)["state"] == "IN_PROGRESS"
    world.stacks.set("alpha", ClusterStatus.CREATE_COMPLETE)
    report = world.sweeper.sweep()
    # THEN the request SUCCEEDED, the cluster is CREATE_COMPLETE with pcluster's details
    final = world.request(request_id)
    assert final["state"] == "SUCCEEDED"
    assert final["result"]["kind"] == "cluster.create"
    assert final["result"]["status"] == "CREATE_COMPLETE"
    view = world.get("/v1/clusters/alpha").get_json()
    assert (view["status"], view["version"], view["scheduler"]) == (
        "CREATE_COMPLETE", "3.16.1", "slurm",
    )  # fmt: skip
    assert view["last_operation"] == {
        "operation": "create", "request_id": request_id,
        "location": f"/v1/requests/{request_id}", "pending": False,
    }  # fmt: skip
    assert (report.clusters_followed, report.cluster_transitions) == (1, 1)
    # AND exactly one cluster.state_changed event, with the job events' attribute scheme
    events = world.cluster_events()
    assert len(events) == 1
    assert (events[0].old_state, events[0].new_state) == (
        ClusterStatus.CREATE_IN_PROGRESS, ClusterStatus.CREATE_COMPLETE,
    )  # fmt: skip
    assert events[0].attributes() == {
        "type": "cluster.state_changed", "cluster": "alpha", "owner": ALICE,
        "state": "CREATE_COMPLETE",
    }  # fmt: skip
    assert [e.request_id for e in world.request_events()] == [request_id]
    # AND another sweep publishes nothing more
    world.sweeper.sweep()
    assert len(world.cluster_events()) == 1


def test_a_create_rejected_by_validators_fails_with_the_structured_findings(world: World) -> None:
    # GIVEN a create whose configuration pcluster's validators reject
    request_id = create(world)
    findings = [
        ValidationMessage(level="ERROR", type="KeyPairValidator", message="no key pair 'k'"),
        ValidationMessage(level="WARNING", type="AmiOsCompatibleValidator", message="old AMI"),
    ]
    world.provider.answers.append(
        ConfigurationRejectedError("Invalid cluster configuration.", findings)
    )
    # WHEN the worker runs it
    assert world.work() == {"batchItemFailures": []}
    # THEN the request FAILED, permanently, with the findings as a structured list
    error = world.request(request_id)["error"]
    assert (error["code"], error["transient"]) == ("CONFIGURATION_REJECTED", False)
    assert error["validation_messages"] == [
        {"level": "ERROR", "type": "KeyPairValidator", "message": "no key pair 'k'"},
        {"level": "WARNING", "type": "AmiOsCompatibleValidator", "message": "old AMI"},
    ]
    # AND the cluster is CREATE_FAILED with the error finding, its event published once
    view = world.get("/v1/clusters/alpha").get_json()
    assert view["status"] == "CREATE_FAILED"
    assert {"code": "KeyPairValidator", "reason": "no key pair 'k'"} in view["failures"]
    assert [e.new_state for e in world.cluster_events()] == [ClusterStatus.CREATE_FAILED]


def test_a_dry_run_succeeds_with_dryrun_true_and_records_no_cluster(world: World) -> None:
    # GIVEN a dry-run create
    request_id = create(world, dryrun=True)
    world.provider.answers.append(
        ProviderAnswer(
            dryrun=True,
            message="Request would have succeeded, but DryRun flag is set.",
            validation_messages=[
                ValidationMessage(level="WARNING", type="KeyPairValidator", message="no key")
            ],
        )
    )
    # WHEN the worker runs it
    world.work()
    # THEN it SUCCEEDED with dryrun true and the findings; no cluster was recorded
    final = world.request(request_id)
    assert final["state"] == "SUCCEEDED"
    assert final["result"]["dryrun"] is True
    assert final["result"]["validation_messages"][0]["type"] == "KeyPairValidator"
    assert world.get("/v1/clusters/alpha").status_code == 404
    assert world.provider.calls[0][1].dryrun is True  # type: ignore[union-attr]


def test_throttling_is_retried_and_the_retry_succeeds(world: World) -> None:
    # GIVEN a create that pcluster throttles once
    request_id = create(world)
    world.provider.answers += [ThrottledError("Rate exceeded"), ProviderAnswer(info=info("alpha"))]
    # WHEN the worker runs it
    first = world.work()
    # THEN the record is reported failed (SQS delivers it again); the request shows the error
    assert len(first["batchItemFailures"]) == 1
    retrying = world.request(request_id)
    assert (retrying["state"], retrying["error"]["code"]) == ("DISPATCHED", "THROTTLED")
    assert world.get("/v1/clusters/alpha").get_json()["status"] == "CREATE_IN_PROGRESS"
    # WHEN it comes back (back-off 0 s here)
    assert world.work() == {"batchItemFailures": []}
    # THEN pcluster took it on the second delivery
    assert world.request(request_id)["state"] == "IN_PROGRESS"
    assert [c[0] for c in world.provider.calls] == ["create", "create"]


def test_a_redelivered_create_after_acceptance_does_not_call_pcluster_again(world: World) -> None:
    # GIVEN a create pcluster accepted
    request_id = create(world)
    world.provider.answers.append(ProviderAnswer(info=info("alpha")))
    world.work()
    # WHEN the same message is handled again (at-least-once delivery)
    message = cluster_worker.ClusterMessage(
        kind="cluster.create", request_id=request_id, owner=ALICE, cluster="alpha",
        configuration=CONFIG,
    )  # fmt: skip
    outcome = cluster_worker.cluster_worker().handle(message)
    # THEN it is skipped: one pcluster call in all
    assert outcome == "skipped"
    assert len(world.provider.calls) == 1


def test_a_failed_stack_fails_the_create_with_the_stack_events_reason(world: World) -> None:
    # GIVEN an accepted create
    request_id = create(world)
    world.provider.answers.append(ProviderAnswer(info=info("alpha")))
    world.work()
    # WHEN the stack rolls back (ParallelCluster reports CREATE_FAILED)
    world.stacks.set("alpha", ClusterStatus.CREATE_FAILED, reason="HeadNode: quota exceeded")
    world.sweeper.sweep()
    # THEN the request FAILED with the reason, and the cluster records it
    error = world.request(request_id)["error"]
    assert error["code"] == "CLUSTER_CREATE_FAILED"
    assert "HeadNode: quota exceeded" in error["message"]
    view = world.get("/v1/clusters/alpha").get_json()
    assert view["status"] == "CREATE_FAILED"
    assert view["failures"] == [{"code": "StackFailure", "reason": "HeadNode: quota exceeded"}]


def test_a_dead_lettered_create_fails_visibly(world: World) -> None:
    # GIVEN a create that kept failing transiently until its message reached the DLQ
    request_id = create(world)
    world.provider.answers.append(ThrottledError("Rate exceeded"))
    world.work()
    body = json.dumps(
        {"kind": "cluster.create", "request_id": request_id, "owner": ALICE, "cluster": "alpha"}
    )
    world.sqs.send_message(
        QueueUrl=world.resources.provisioned.queue_url("ClusterDLQ"), MessageBody=body
    )
    # WHEN the cluster DLQ handler takes it
    assert world.work("ClusterDLQ") == {"batchItemFailures": []}
    # THEN the request FAILED with RETRIES_EXHAUSTED and the last error; the cluster too
    error = world.request(request_id)["error"]
    assert error["code"] == "RETRIES_EXHAUSTED"
    assert "THROTTLED" in error["message"]
    assert world.get("/v1/clusters/alpha").get_json()["status"] == "CREATE_FAILED"


# -- delete, fleet, update, refresh --------------------------------------------------------------


def test_delete_follows_the_stack_to_delete_complete(world: World) -> None:
    # GIVEN a running cluster
    created(world)
    # WHEN it is deleted
    answer = world.delete("/v1/clusters/alpha")
    assert answer.status_code == 202
    request_id = answer.get_json()["request_id"]
    # (pcluster describes the stack the create made, then accepts the delete)
    world.provider.answers.append(info("alpha", ClusterStatus.CREATE_COMPLETE))
    world.provider.answers.append(info("alpha", ClusterStatus.DELETE_IN_PROGRESS))
    world.work()
    # THEN it is DELETE_IN_PROGRESS, and a second delete meanwhile is a conflict
    assert world.get("/v1/clusters/alpha").get_json()["status"] == "DELETE_IN_PROGRESS"
    assert world.delete("/v1/clusters/alpha").status_code == 409
    # WHEN the stack is gone
    world.stacks.stacks.pop("alpha")
    world.sweeper.sweep()
    # THEN the request SUCCEEDED and the cluster is DELETE_COMPLETE
    assert world.request(request_id)["result"]["status"] == "DELETE_COMPLETE"
    assert world.get("/v1/clusters/alpha").get_json()["status"] == "DELETE_COMPLETE"
    states = [e.new_state for e in world.cluster_events()]
    assert states == [ClusterStatus.DELETE_IN_PROGRESS, ClusterStatus.DELETE_COMPLETE]


def test_deleting_a_cluster_pcluster_does_not_know_completes_at_once(world: World) -> None:
    # GIVEN a cluster whose create was rejected (no stack was ever made)
    create(world)
    world.provider.answers.append(ConfigurationRejectedError("Invalid", []))
    world.work()
    # WHEN it is deleted and pcluster answers NotFound
    request_id = world.delete("/v1/clusters/alpha").get_json()["request_id"]
    world.provider.answers.append(ClusterNotFoundError("Cluster 'alpha' does not exist"))
    world.work()
    # THEN the delete SUCCEEDED and the name is free again
    assert world.request(request_id)["state"] == "SUCCEEDED"
    assert world.get("/v1/clusters/alpha").get_json()["status"] == "DELETE_COMPLETE"
    assert world.post("/v1/clusters", {"name": "alpha", "configuration": CONFIG}).status_code == 202


def outside(name: str, *, created_at: datetime, stack: str = "theirs") -> ClusterInfo:
    """pcluster's description of a cluster of that name the broker did not create."""
    described = info(name, ClusterStatus.CREATE_COMPLETE)
    described.stack_arn = f"arn:aws:cloudformation:us-east-1:123456789012:stack/{name}/{stack}"
    described.created_at = created_at
    return described


def test_creating_the_name_of_a_stack_the_broker_did_not_create_is_409(world: World) -> None:
    # GIVEN a cluster stack "alpha" made outside the broker (the broker has no record of it)
    world.stacks.set("alpha", ClusterStatus.CREATE_COMPLETE)
    # WHEN a caller asks to create "alpha"
    answer = world.post("/v1/clusters", {"name": "alpha", "configuration": CONFIG})
    # THEN 409 CLUSTER_EXISTS, and nothing is recorded or queued
    assert answer.status_code == 409
    assert answer.get_json()["error"]["code"] == "CLUSTER_EXISTS"
    assert world.get("/v1/clusters/alpha").status_code == 404
    url = world.resources.provisioned.queue_url("ClusterQueue")
    assert "Messages" not in world.sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)


def test_a_name_taken_outside_the_broker_cannot_be_created_nor_then_deleted(world: World) -> None:
    # GIVEN a cluster "alpha" made with pcluster directly, a day before, unknown to the broker
    theirs = outside("alpha", created_at=datetime.now(UTC) - timedelta(days=1))
    # WHEN a caller asks the broker to create "alpha" and pcluster refuses (the name is taken)
    request_id = create(world)
    world.provider.answers += [ConflictError("cluster alpha already exists"), theirs]
    world.work()
    # THEN the request FAILED with CLUSTER_EXISTS, and no stack was recorded as the broker's
    failed = world.request(request_id)
    assert (failed["state"], failed["error"]["code"]) == ("FAILED", "CLUSTER_EXISTS")
    assert world.get("/v1/clusters/alpha").get_json()["status"] == "CREATE_FAILED"
    # WHEN the caller then deletes "alpha" through the broker
    deleted = world.delete("/v1/clusters/alpha").get_json()["request_id"]
    world.work()
    # THEN it completes at once without asking pcluster to delete anything: the other
    # cluster is untouched
    assert world.request(deleted)["state"] == "SUCCEEDED"
    assert [op for op, _ in world.provider.calls if op == "delete"] == []


def test_a_redelivered_create_that_pcluster_had_accepted_is_followed(world: World) -> None:
    # GIVEN a create whose first delivery reached pcluster, but the worker stopped before
    # recording it: pcluster now says the name is taken, by a stack made after the request
    request_id = create(world)
    ours = outside("alpha", created_at=datetime.now(UTC), stack="ours")
    ours.status = ClusterStatus.CREATE_IN_PROGRESS
    world.provider.answers += [ConflictError("cluster alpha already exists"), ours]
    # WHEN the worker runs the message
    world.work()
    # THEN the create is IN_PROGRESS with that stack recorded as the broker's
    assert world.request(request_id)["state"] == "IN_PROGRESS"
    assert world.store.get_cluster("alpha").stack_arn == ours.stack_arn


def test_delete_leaves_alone_a_stack_that_took_the_name_after_ours_was_gone(world: World) -> None:
    # GIVEN alice's cluster, whose stack was since deleted outside the broker, and a new
    # cluster of the same name made by someone else
    created(world)
    later = outside("alpha", created_at=datetime.now(UTC), stack="someone-elses")
    # WHEN alice deletes "alpha" through the broker
    request_id = world.delete("/v1/clusters/alpha").get_json()["request_id"]
    world.provider.answers.append(later)
    world.work()
    # THEN hers is recorded gone, and pcluster was not asked to delete the other one
    assert world.request(request_id)["state"] == "SUCCEEDED"
    assert world.get("/v1/clusters/alpha").get_json()["status"] == "DELETE_COMPLETE"
    assert [op for op, _ in world.provider.calls if op == "delete"] == []


@pytest.mark.parametrize("status", ["STOP_REQUESTED", "START_REQUESTED"])
def test_fleet_stop_and_start(world: World, status: str) -> None:
    # GIVEN a running cluster
    created(world)
    # WHEN its compute fleet is stopped (or started)
    answer = world.post("/v1/clusters/alpha/fleet", {"status": status})
    assert answer.status_code == 202
    world.provider.answers.append(ComputeFleetStatus(status))
    world.work()
    # THEN pcluster was asked for it; the request and the record carry the fleet status
    assert world.provider.calls[-1] == ("fleet", status)
    final = world.request(answer.get_json()["request_id"])
    assert (final["state"], final["result"]["compute_fleet_status"]) == ("SUCCEEDED", status)
    view = world.get("/v1/clusters/alpha").get_json()
    assert view["compute_fleet_status"] == status
    assert view["last_operation"]["pending"] is False


def test_update_with_force_update_reaches_pcluster_and_is_followed(world: World) -> None:
    # GIVEN a running cluster
    created(world)
    # WHEN it is updated with force_update
    answer = world.put(
        "/v1/clusters/alpha", {"configuration": CONFIG + "# v2\n", "force_update": True}
    )
    assert answer.status_code == 202
    request_id = answer.get_json()["request_id"]
    world.provider.answers.append(
        ProviderAnswer(info=info("alpha", ClusterStatus.UPDATE_IN_PROGRESS))
    )
    world.work()
    # THEN pcluster got force_update and the new configuration; the cluster stays usable
    operation, message = world.provider.calls[-1]
    assert operation == "update"
    assert message.force_update is True  # type: ignore[attr-defined]
    assert message.configuration.endswith("# v2\n")  # type: ignore[attr-defined]
    assert world.get("/v1/clusters/alpha").get_json()["status"] == "UPDATE_IN_PROGRESS"
    assert world.post("/v1/clusters/alpha/jobs", {"script": SCRIPT}).status_code == 202
    # WHEN the stack update completes
    world.stacks.set("alpha", ClusterStatus.UPDATE_COMPLETE)
    world.sweeper.sweep()
    # THEN the update SUCCEEDED
    assert world.request(request_id)["result"]["status"] == "UPDATE_COMPLETE"


def test_refresh_queues_a_describe_that_updates_the_record(world: World) -> None:
    # GIVEN a running cluster
    created(world)
    # WHEN a refresh is asked
    answer = world.get("/v1/clusters/alpha?refresh=true")
    assert answer.status_code == 202
    described = info("alpha", ClusterStatus.CREATE_COMPLETE)
    described.head_node_instance_id = "i-0abc"
    described.compute_fleet_status = ComputeFleetStatus.RUNNING
    world.provider.answers.append(described)
    world.work()
    # THEN the describe SUCCEEDED and the record has the head node
    assert world.request(answer.get_json()["request_id"])["result"]["status"] == "CREATE_COMPLETE"
    view = world.get("/v1/clusters/alpha").get_json()
    assert (view["head_node_instance_id"], view["compute_fleet_status"]) == ("i-0abc", "RUNNING")


# -- API rules ---------------------------------------------------------------------------------


def test_creating_an_existing_cluster_is_409_for_anyone(world: World) -> None:
    # GIVEN alice's cluster being created
    create(world)
    # WHEN alice or bob creates it again / THEN 409 (names are per account and region)
    for who in (ALICE, BOB):
        again = world.post("/v1/clusters", {"name": "alpha", "configuration": CONFIG}, who=who)
        assert again.status_code == 409
        assert again.get_json()["error"]["code"] == "CONFLICT"


def test_unknown_and_other_owners_clusters_answer_404(world: World) -> None:
    # GIVEN alice's cluster
    created(world)
    # WHEN bob, or anyone for an unknown name, reads, updates, deletes or stops it
    calls = [
        lambda who, n: world.get(f"/v1/clusters/{n}", who=who),
        lambda who, n: world.delete(f"/v1/clusters/{n}", who=who),
        lambda who, n: world.put(f"/v1/clusters/{n}", {"configuration": CONFIG}, who=who),
        lambda who, n: world.post(f"/v1/clusters/{n}/fleet", {"status": "STOP_REQUESTED"}, who),
    ]
    # THEN 404, the same answer as for a cluster that does not exist
    for call in calls:
        assert call(BOB, "alpha").status_code == 404
        assert call(ALICE, "nosuch").status_code == 404
    # AND bob's list is empty while alice's has it
    assert world.get("/v1/clusters", who=BOB).get_json()["clusters"] == []
    assert [c["name"] for c in world.get("/v1/clusters").get_json()["clusters"]] == ["alpha"]


@pytest.mark.parametrize(
    "name", ["1abc", "-abc", "a_b", "a.b", "a" * 61, "", "ab c"], ids=lambda n: repr(n[:8])
)
def test_invalid_cluster_names_are_422(world: World, name: str) -> None:
    # GIVEN a name ParallelCluster refuses / WHEN a create is posted / THEN 422 on body.name
    answer = world.post("/v1/clusters", {"name": name, "configuration": CONFIG})
    assert answer.status_code == 422
    assert [f["field"] for f in answer.get_json()["error"]["fields"]] == ["body.name"]


def test_a_60_character_name_is_accepted(world: World) -> None:
    # GIVEN the longest name ParallelCluster allows / WHEN created / THEN accepted
    assert create(world, "a" + "b1-" * 19 + "z") is not None


def test_jobs_to_a_cluster_not_ready_are_409_cluster_not_ready(world: World) -> None:
    # GIVEN a cluster still being created
    create(world)
    # WHEN a job or a batch is submitted to it
    single = world.post("/v1/clusters/alpha/jobs", {"script": SCRIPT})
    batch = world.post("/v1/clusters/alpha/jobs:batch", {"jobs": [{"script": SCRIPT}]})
    # THEN 409 CLUSTER_NOT_READY with the cluster's status
    for answer in (single, batch):
        assert answer.status_code == 409
        error = answer.get_json()["error"]
        assert (error["code"], error["cluster_status"]) == (
            "CLUSTER_NOT_READY", "CREATE_IN_PROGRESS",
        )  # fmt: skip
    # AND nothing was written or queued for them (the check is in the write's transaction)
    assert world.get("/v1/clusters/alpha/jobs").get_json()["jobs"] == []
    url = world.resources.provisioned.queue_url("RequestsQueue")
    assert "Messages" not in world.sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)
    # AND a cluster being created that the directory does not know yet is 409 too, not 404
    create(world, "beta")
    answer = world.post("/v1/clusters/beta/jobs", {"script": SCRIPT})
    assert (answer.status_code, answer.get_json()["error"]["cluster_status"]) == (
        409, "CREATE_IN_PROGRESS",
    )  # fmt: skip
    # AND a cluster the broker has no record of is resolved as before (the directory)
    assert world.post("/v1/clusters/local/jobs", {"script": SCRIPT}).status_code == 202


def test_jobs_are_accepted_once_the_cluster_is_create_complete(world: World) -> None:
    # GIVEN a cluster that reached CREATE_COMPLETE
    created(world)
    # WHEN a job is submitted / THEN 202
    assert world.post("/v1/clusters/alpha/jobs", {"script": SCRIPT}).status_code == 202


def test_an_update_while_another_operation_is_in_progress_is_409(world: World) -> None:
    # GIVEN a cluster being created
    create(world)
    # WHEN an update or a fleet stop is asked / THEN 409
    assert world.put("/v1/clusters/alpha", {"configuration": CONFIG}).status_code == 409
    stop = world.post("/v1/clusters/alpha/fleet", {"status": "STOP_REQUESTED"})
    assert stop.status_code == 409


def test_unknown_fields_and_bad_fleet_status_are_422(world: World) -> None:
    # GIVEN bodies with an unknown field or an unknown fleet status / THEN 422
    body = {"name": "alpha", "configuration": CONFIG, "extra": 1}
    assert world.post("/v1/clusters", body).status_code == 422
    created(world)
    assert world.post("/v1/clusters/alpha/fleet", {"status": "RUNNING"}).status_code == 422


def test_sweep_report_counts_nothing_without_cluster_work(world: World) -> None:
    # GIVEN no cluster / WHEN swept / THEN no stack read
    report = world.sweeper.sweep()
    assert isinstance(report, SweepReport)
    assert (report.clusters_followed, report.stack_reads) == (0, 0)
    assert world.stacks.reads == 0
    assert RequestState.IN_PROGRESS.final is False
