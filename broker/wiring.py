"""Small cached factories that build each function's dependencies once per cold start.

Tests build services directly with their own fakes; Lambda handlers call these. Each service
gets its records as the ports it needs: the cluster records alone where that is all it reads
(the directory, the gate, the cluster announcer), and every record port over the one table
where a service's own protocol asks for several together.
"""

from __future__ import annotations

from datetime import timedelta
from functools import cache
from typing import Literal, Protocol

from broker.adapters.aws import client, regional_client
from broker.adapters.cloudformation import CloudFormationStackReader
from broker.adapters.dynamodb import DynamoClusterStore, DynamoStore
from broker.adapters.dynamodb.users import DynamoUserMappings
from broker.adapters.ec2 import Ec2ClusterDirectory
from broker.adapters.local_directory import LocalClusterDirectory
from broker.adapters.s3 import S3ArtifactStore
from broker.adapters.sns import SnsNotifier
from broker.adapters.sqs import SqsClusterQueue, SqsRequestQueue
from broker.clusters.service import ClusterGate, ClusterService
from broker.clusters.worker import ClusterWorker
from broker.errors import ValidationError
from broker.jobs.accept import RequestService
from broker.jobs.dead_letters import DeadLetterService
from broker.jobs.dispatch import Dispatcher
from broker.notifications.announcer import Announcer, ClusterAnnouncer
from broker.ports import (
    AttentionIndex,
    BatchStore,
    ClusterDirectory,
    ClusterProvider,
    ClusterStore,
    CommandRunner,
    JobStore,
    Limits,
    RequestStore,
    StackStatusReader,
)
from broker.runners.local import LocalRunner
from broker.runners.ssm import SsmRunner
from broker.settings import (
    CommonSettings,
    JobWorkerSettings,
    api_settings,
    cluster_worker_settings,
    identity_settings,
    job_worker_settings,
    page_token_settings,
    sweeper_settings,
)
from broker.sweep.clusters import ClusterFollower
from broker.sweep.status import Sweeper
from broker.users.service import MappedUsers, UserAdmin


class TableRecords(RequestStore, JobStore, BatchStore, AttentionIndex, ClusterStore, Protocol):
    """Every record port of the one table (what ``DynamoStore`` implements)."""


def _records(settings: CommonSettings) -> TableRecords:
    """Every record port over the table, for services whose protocol needs several at once."""
    return DynamoStore(client("dynamodb"), settings.table_name)


def _clusters(settings: CommonSettings) -> ClusterStore:
    """The cluster records alone."""
    return DynamoClusterStore(client("dynamodb"), settings.table_name)


def _mappings(settings: CommonSettings) -> DynamoUserMappings:
    return DynamoUserMappings(client("dynamodb"), settings.table_name)


@cache
def user_admin() -> UserAdmin:
    """The admin API's mapping service."""
    return UserAdmin(_mappings(api_settings()))


def cluster_directory(settings: CommonSettings) -> ClusterDirectory:
    """Where clusters' head nodes are: EC2 tags in AWS, this machine in local mode (the named
    local clusters, and those the local provisioning simulation created)."""
    if settings.clusters_mode == "local":
        return LocalClusterDirectory(settings.local_cluster_names, _clusters(settings))
    return Ec2ClusterDirectory(client("ec2"), cache_seconds=settings.ec2_cache_seconds)


def _simulation(settings: CommonSettings) -> ClusterProvider:
    # Local mode only; broker.local is a development package, never part of a deployment.
    from broker.local.cluster_provider import SimulatedClusterProvider  # noqa: PLC0415

    return SimulatedClusterProvider(
        client("dynamodb"), settings.table_name, delay_seconds=settings.simulated_cluster_seconds
    )


def _stack_reader(settings: CommonSettings) -> StackStatusReader:
    if settings.clusters_mode == "local":
        from broker.local.cluster_provider import SimulatedClusterProvider  # noqa: PLC0415

        return SimulatedClusterProvider(
            client("dynamodb"),
            settings.table_name,
            delay_seconds=settings.simulated_cluster_seconds,
        )
    return CloudFormationStackReader(_cloudformation)


def _cloudformation(region: str | None) -> object:
    return client("cloudformation") if region is None else regional_client("cloudformation", region)


@cache
def cluster_service() -> ClusterService:
    """The API's cluster service."""
    settings = api_settings()
    if not settings.cluster_queue_url:
        raise ValidationError("cluster operations are not configured in this deployment")
    return ClusterService(
        _records(settings),
        SqsClusterQueue(client("sqs"), settings.cluster_queue_url),
        _stack_reader(settings),
    )


@cache
def cluster_worker() -> ClusterWorker:
    """The cluster worker's service: pcluster in AWS, the local simulation in local mode."""
    settings = cluster_worker_settings()
    store = _records(settings)
    notifier = SnsNotifier(client("sns"), settings.topic_arn)
    if settings.clusters_mode == "local":
        provider, name = _simulation(settings), "local-simulation"
    else:
        from broker.adapters.pcluster import PclusterProvider  # noqa: PLC0415

        provider, name = PclusterProvider(default_region=settings.region), "pcluster"
    return ClusterWorker(
        store,
        provider,
        Announcer(store, notifier),
        ClusterAnnouncer(_clusters(settings), notifier),
        provider_name=name,
    )


@cache
def request_service() -> RequestService:
    """The API's service."""
    settings = api_settings()
    store = _records(settings)
    announcer = (
        Announcer(store, SnsNotifier(client("sns"), settings.topic_arn))
        if settings.topic_arn
        else None
    )
    return RequestService(
        store=store,
        queue=SqsRequestQueue(client("sqs"), settings.queue_url),
        clusters=cluster_directory(settings),
        announcer=announcer,
        limits=Limits(
            cluster_backlog=settings.max_cluster_backlog,
            owner_inflight=settings.max_owner_inflight,
            retry_after_seconds=settings.retry_after_seconds,
        ),
        users=MappedUsers(_mappings(settings), contact=identity_settings().admin_contact or None),
        cluster_gate=ClusterGate(_clusters(settings)),
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


def _announcer(settings: JobWorkerSettings) -> Announcer:
    return Announcer(_records(settings), SnsNotifier(client("sns"), settings.topic_arn))


@cache
def dispatcher() -> Dispatcher:
    """The job worker's service."""
    settings = job_worker_settings()
    return Dispatcher(
        store=_records(settings),
        clusters=cluster_directory(settings),
        runner_for=_runner,
        announcer=_announcer(settings),
        artifacts=(
            S3ArtifactStore(client("s3"), settings.staging_bucket)
            if settings.staging_bucket
            else None
        ),
        default_working_directory=settings.default_working_directory,
        submit_concurrency=settings.submit_concurrency,
    )


@cache
def dead_letter_service() -> DeadLetterService:
    """The DLQ worker's service (it asks head nodes what of a dead chunk is in Slurm)."""
    settings = job_worker_settings()
    # Its own dispatcher, without the job worker's output store: it only looks jobs up.
    lookup = Dispatcher(
        store=_records(settings),
        clusters=cluster_directory(settings),
        runner_for=_runner,
        announcer=_announcer(settings),
        default_working_directory=settings.default_working_directory,
        submit_concurrency=settings.submit_concurrency,
    )
    return DeadLetterService(_records(settings), _announcer(settings), lookup)


@cache
def sweeper() -> Sweeper:
    """The sweeper's service."""
    settings = sweeper_settings()
    store = _records(settings)
    announcer = _announcer(settings)
    notifier = SnsNotifier(client("sns"), settings.topic_arn)
    return Sweeper(
        store=store,
        clusters=cluster_directory(settings),
        runner_for=_runner,
        announcer=announcer,
        follower=ClusterFollower(
            store,
            _stack_reader(settings),
            announcer,
            ClusterAnnouncer(_clusters(settings), notifier),
        ),
        queue=SqsRequestQueue(client("sqs"), settings.queue_url),
        requeue_after=timedelta(seconds=settings.requeue_after_seconds),
        requeue_limit=settings.requeue_max_per_sweep,
        batch_lost_after=timedelta(seconds=settings.batch_lost_after_seconds),
    )


def reset() -> None:
    """Forget every cached dependency and setting (tests, and local stacks that restart)."""
    for cached in (
        request_service,
        request_queue,
        _runner,
        dispatcher,
        dead_letter_service,
        sweeper,
        cluster_service,
        cluster_worker,
        user_admin,
        regional_client,
    ):
        cached.cache_clear()
    identity_settings.cache_clear()
    cluster_worker_settings.cache_clear()
    api_settings.cache_clear()
    page_token_settings.cache_clear()
    job_worker_settings.cache_clear()
    sweeper_settings.cache_clear()
    client.cache_clear()
