"""Small cached factories that build each function's dependencies once per cold start.

Tests build services directly with their own fakes; Lambda handlers call these.
"""

from __future__ import annotations

from functools import cache
from typing import Literal

from broker.adapters.aws import client
from broker.adapters.dynamodb import DynamoRequestStore
from broker.adapters.ec2 import Ec2ClusterDirectory
from broker.adapters.local_directory import LocalClusterDirectory
from broker.adapters.sqs import SqsRequestQueue
from broker.ports import ClusterDirectory, CommandRunner
from broker.runners.local import LocalRunner
from broker.runners.ssm import SsmRunner
from broker.service import DeadLetterService, RequestService, SubmitDispatcher
from broker.settings import CommonSettings, api_settings, job_worker_settings


def cluster_directory(settings: CommonSettings) -> ClusterDirectory:
    """Where clusters' head nodes are: EC2 tags in AWS, this machine in local mode."""
    if settings.clusters_mode == "local":
        return LocalClusterDirectory(settings.local_cluster_names)
    return Ec2ClusterDirectory(client("ec2"), cache_seconds=settings.ec2_cache_seconds)


@cache
def request_service() -> RequestService:
    """The API's service."""
    settings = api_settings()
    return RequestService(
        store=DynamoRequestStore(client("dynamodb"), settings.table_name),
        queue=SqsRequestQueue(client("sqs"), settings.queue_url),
        clusters=cluster_directory(settings),
    )


@cache
def request_queue() -> SqsRequestQueue:
    """The queue adapter workers use for retry back-off (no URL needed: they use ARNs)."""
    return SqsRequestQueue(client("sqs"), None)


@cache
def _runner(mode: Literal["ssm", "local"]) -> CommandRunner:
    settings = job_worker_settings()
    if mode == "local":
        return LocalRunner(
            python=settings.local_agent_python or None,
            timeout=settings.agent_timeout_seconds,
        )
    return SsmRunner(
        ssm_client=client("ssm"),
        s3_client=client("s3") if settings.staging_bucket else None,
        staging_bucket=settings.staging_bucket,
        timeout_seconds=settings.agent_timeout_seconds,
        poll_seconds=settings.ssm_poll_seconds,
    )


@cache
def submit_dispatcher() -> SubmitDispatcher:
    """The job worker's service."""
    settings = job_worker_settings()
    return SubmitDispatcher(
        store=DynamoRequestStore(client("dynamodb"), settings.table_name),
        clusters=cluster_directory(settings),
        runner_for=_runner,
        default_working_directory=settings.default_working_directory,
    )


@cache
def dead_letter_service() -> DeadLetterService:
    """The DLQ worker's service."""
    return DeadLetterService(
        DynamoRequestStore(client("dynamodb"), job_worker_settings().table_name)
    )


def reset() -> None:
    """Forget every cached dependency and setting (tests, and local stacks that restart)."""
    for cached in (request_service, request_queue, _runner, submit_dispatcher, dead_letter_service):
        cached.cache_clear()
    api_settings.cache_clear()
    job_worker_settings.cache_clear()
    client.cache_clear()
