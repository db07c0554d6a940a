"""Every adapter's AWS error path goes through the one translator (broker.adapters.aws).

Each adapter method runs against a stub client whose every call fails the way AWS does; the
translator's classifier is spied on, so a method that built its own broker error (or let the
ClientError out) fails here. No network.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from broker.adapters import aws
from broker.adapters.cloudformation import CloudFormationStackReader
from broker.adapters.dynamodb import DynamoClusterStore, DynamoStore
from broker.adapters.ec2 import Ec2ClusterDirectory
from broker.adapters.pcluster import error_of
from broker.adapters.s3 import S3ArtifactStore
from broker.adapters.sns import SnsNotifier
from broker.adapters.sqs import SqsClusterQueue, SqsRequestQueue
from broker.agent.protocol import AgentRequest
from broker.clusters.models import ClusterMessage
from broker.errors import BrokerError, TransientError
from broker.jobs.models import JobSpec, JobSubmitMessage
from broker.jobs.records import JobRecord, JobState
from broker.notifications.events import JobEvent
from broker.ports import ClusterTarget
from broker.requests.models import RequestRecord
from broker.requests.states import RequestState
from broker.runners.ssm import SsmRunner
from broker.schema import ErrorInfo, new_request_id
from broker.schema import utcnow as now

ROOT = Path(__file__).resolve().parents[2]
AWS_TEXT = "arn:aws:dynamodb:us-east-1:123456789012:table/hpcb-private-table"
ALICE = "arn:aws:iam::123456789012:user/alice"


class BrokenAws:
    """A stub boto3 client: every operation fails with a transaction conflict, as DynamoDB
    answers under contention (the code only the translator turns into WRITE_CONFLICT)."""

    def __getattr__(self, operation: str) -> Callable[..., Any]:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise ClientError(
                {
                    "Error": {"Code": "TransactionCanceledException", "Message": AWS_TEXT},
                    "CancellationReasons": [{"Code": "TransactionConflict"}],
                    "ResponseMetadata": {"HTTPStatusCode": 400},
                },
                operation,
            )

        return fail


def _request() -> RequestRecord:
    moment = now()
    return RequestRecord(
        request_id=new_request_id(), kind="job.submit", owner=ALICE, cluster="local",
        state=RequestState.ACCEPTED, created_at=moment, updated_at=moment,
    )  # fmt: skip


def _job(request: RequestRecord) -> JobRecord:
    return JobRecord(
        job_id=request.request_id, cluster="local", owner=ALICE, state=JobState.SUBMITTING,
        created_at=request.created_at, updated_at=request.created_at,
    )  # fmt: skip


def _message() -> JobSubmitMessage:
    return JobSubmitMessage(
        kind="job.submit",
        request_id=new_request_id(),
        owner=ALICE,
        cluster="local",
        user="hpcb-dev",
        spec=JobSpec(script="#!/bin/sh\ntrue\n"),
    )


def _store() -> DynamoStore:
    return DynamoStore(BrokenAws(), "table")


def _clusters() -> DynamoClusterStore:
    return DynamoClusterStore(BrokenAws(), "table")


def _pcluster() -> None:
    class AWSClientError(Exception):
        error_code = "ThrottlingException"  # pcluster passes on the code, not the reasons

    raise error_of("AWSClientError", {}, AWSClientError(AWS_TEXT), "describe_cluster")


def _event() -> JobEvent:
    job = _job(_request()).model_copy(update={"state": JobState.COMPLETED})
    return JobEvent.of(job, JobState.RUNNING)


CALLS: dict[str, Callable[[], object]] = {
    "DynamoStore.create": lambda: _store().create(_request()),
    "DynamoStore.get": lambda: _store().get(new_request_id()),
    "DynamoStore.mark_dispatched": lambda: _store().mark_dispatched(new_request_id()),
    "DynamoStore.record_retry": lambda: _store().record_retry(
        new_request_id(), ErrorInfo(code="X", message="x", transient=True)
    ),
    "DynamoStore.create_submission": lambda: _store().create_submission(
        _request(), _job(_request())
    ),
    "DynamoStore.create_batch": lambda: _store().create_batch(_request()),
    "DynamoStore.jobs_by_id": lambda: _store().jobs_by_id(["r1"]),
    "DynamoStore.start_chunk": lambda: _store().start_chunk("b1", 0, ["r1"]),
    "DynamoStore.record_submitted": lambda: _store().record_submitted(new_request_id(), "1"),
    "DynamoStore.list_jobs": lambda: _store().list_jobs(
        ALICE, "local", states=None, name=None, since=None, until=None, limit=5, next_token=None
    ),
    "DynamoStore.attention": lambda: _store().attention(),
    "DynamoStore.backlog": lambda: _store().backlog("CLUSTER", "local"),
    "DynamoClusterStore.get_cluster": lambda: _clusters().get_cluster("alpha"),
    "DynamoClusterStore.list_clusters": lambda: _clusters().list_clusters(
        ALICE, limit=5, next_token=None
    ),
    "DynamoClusterStore.active_clusters": lambda: _clusters().active_clusters(),
    "SqsRequestQueue.send": lambda: SqsRequestQueue(BrokenAws(), "url").send(_message()),
    "SqsRequestQueue.delay_retry": lambda: SqsRequestQueue(BrokenAws(), None).delay_retry(
        "arn:aws:sqs:us-east-1:123456789012:q", "handle", 5
    ),
    "SqsClusterQueue.send_cluster": lambda: SqsClusterQueue(BrokenAws(), "url").send_cluster(
        ClusterMessage(
            kind="cluster.delete", request_id=new_request_id(), owner=ALICE, cluster="alpha"
        )
    ),
    "SnsNotifier.publish": lambda: SnsNotifier(BrokenAws(), "arn").publish(_event()),
    "S3ArtifactStore.put_text": lambda: S3ArtifactStore(BrokenAws(), "bucket").put_text("k", "t"),
    "Ec2ClusterDirectory.resolve": lambda: Ec2ClusterDirectory(BrokenAws()).resolve("alpha"),
    "CloudFormationStackReader.read": lambda: CloudFormationStackReader(
        lambda region: BrokenAws()
    ).read("alpha", None, None),
    "PclusterProvider AWSClientError": _pcluster,
    "SsmRunner.run": lambda: SsmRunner(BrokenAws(), timeout_seconds=5).run(
        ClusterTarget(name="alpha", mode="ssm", instance_id="i-0123456789abcdef0"),
        AgentRequest(op="ping"),
    ),
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS)
def test_each_adapter_translates_aws_errors_through_the_one_translator(
    call: Callable[[], object], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN every AWS call failing with a transaction conflict, and the translator spied on
    seen: list[str] = []
    classify = aws._classify

    def spy(exc: Exception, what: str) -> BrokerError:
        seen.append(what)
        return classify(exc, what)

    monkeypatch.setattr(aws, "_classify", spy)
    # WHEN the adapter method runs
    with pytest.raises(BrokerError) as caught:
        call()
    # THEN the translator made its error: transient, without AWS's text, chained to the cause
    assert seen
    assert isinstance(caught.value, TransientError)
    assert caught.value.code in ("WRITE_CONFLICT", "THROTTLED")
    assert AWS_TEXT not in caught.value.message


ADAPTER_MODULES = [
    *sorted((ROOT / "broker" / "adapters").rglob("*.py")),
    ROOT / "broker" / "runners" / "ssm.py",
]


@pytest.mark.parametrize("path", ADAPTER_MODULES, ids=lambda p: p.name)
def test_a_module_that_catches_aws_errors_imports_the_translator_and_reads_no_aws_text(
    path: Path,
) -> None:
    # GIVEN an adapter module's source
    tree = ast.parse(path.read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    imported = {
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    if path.name == "aws.py" or not names & {"ClientError", "BotoCoreError"}:
        return  # the translator itself, or a module that never meets botocore's errors
    # WHEN it catches botocore's errors / THEN it uses the one translator
    assert ("broker.adapters.aws", "translate") in imported
    # AND it never reads AWS's error message (only the translator logs it)
    assert not [node for node in ast.walk(tree) if _reads_message(node)]


def _reads_message(node: ast.AST) -> bool:
    """``x["Message"]`` or ``x.get("Message", ...)``."""
    if isinstance(node, ast.Subscript):
        key = node.slice
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
        if node.func.attr != "get":
            return False
        key = node.args[0]
    else:
        return False
    return isinstance(key, ast.Constant) and key.value == "Message"
