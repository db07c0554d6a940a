"""Typed settings, one model per function, read from the environment once at cold start.

Nothing else in the code base reads ``os.environ``. Names are the environment variables set in
``template.yaml`` (and by the local stack, from the same template).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    """What every function needs."""

    model_config = SettingsConfigDict(env_prefix="HPCB_", frozen=True, extra="ignore")

    table_name: str = Field(description="DynamoDB table of requests (and later jobs, clusters).")
    clusters_mode: Literal["ec2", "local"] = Field(
        default="ec2",
        description="ec2: clusters are ParallelCluster head nodes found by EC2 tags; "
        "local: the clusters named in HPCB_LOCAL_CLUSTERS run on this machine's Slurm.",
    )
    local_clusters: str = Field(
        default="local", description="Comma-separated cluster names served by this machine."
    )
    ec2_cache_seconds: int = Field(default=60, ge=0, description="Head-node lookup cache TTL.")
    simulated_cluster_seconds: float = Field(
        default=5.0,
        ge=0,
        description="local mode: how long the simulated provisioning of a cluster create, "
        "update or delete takes (a real one: 10-20 minutes).",
    )

    @property
    def local_cluster_names(self) -> frozenset[str]:
        """The set of local cluster names."""
        return frozenset(n.strip() for n in self.local_clusters.split(",") if n.strip())


class IdentitySettings(BaseSettings):
    """How the API names a caller as an owner (``broker.identity``)."""

    model_config = SettingsConfigDict(env_prefix="HPCB_", frozen=True, extra="ignore")

    session_name_roles: str = Field(
        default="AWSReservedSSO_*",
        description="Comma-separated name patterns of IAM roles whose session names an identity "
        "provider sets (the caller cannot choose them): their sessions are owners of their own. "
        "Every other role's sessions share one owner, the role.",
    )

    admin_principals: str = Field(
        default="",
        description="Comma-separated owners (as broker.identity names them) who may use the "
        "admin routes (/v1/admin/...: caller-to-user mappings). Everyone else gets 404 there.",
    )
    admin_contact: str = Field(
        default="",
        max_length=200,
        description="Whom a caller without a user on a cluster should ask (in the 403's text).",
    )

    @property
    def admin_principal_set(self) -> frozenset[str]:
        """The admin owners, as a set."""
        return frozenset(p.strip() for p in self.admin_principals.split(",") if p.strip())

    @property
    def session_name_role_patterns(self) -> tuple[str, ...]:
        """The patterns, as a tuple."""
        return tuple(p.strip() for p in self.session_name_roles.split(",") if p.strip())


class PageTokenSettings(BaseSettings):
    """The key that signs the API's ``next_token`` (HMAC-SHA256): the API function only."""

    model_config = SettingsConfigDict(env_prefix="HPCB_", frozen=True, extra="ignore")

    page_token_secret: str | None = Field(
        default=None,
        description="Name or ARN of the Secrets Manager secret holding the key (template.yaml "
        "generates it); read once per cold start.",
    )
    page_token_key: SecretStr | None = Field(
        default=None,
        min_length=32,
        description="The key itself, where no secret is configured (tests). Neither set: a "
        "random key per process (tokens then work within one process only).",
    )


class ApiSettings(CommonSettings, PageTokenSettings):
    """The API function."""

    queue_url: str = Field(description="URL of the requests queue.")
    cluster_queue_url: str | None = Field(
        default=None, description="URL of the cluster operations queue (cluster routes)."
    )
    topic_arn: str | None = Field(
        default=None, description="SNS topic: events of cancels done at once by the API."
    )
    idempotency_table: str | None = Field(
        default=None, description="DynamoDB table of Idempotency-Key records."
    )
    max_cluster_backlog: int = Field(
        default=50_000,
        ge=1,
        description="Submissions accepted but not yet in Slurm, per cluster, before 429.",
    )
    max_owner_inflight: int = Field(
        default=20_000,
        ge=1,
        description="Submissions accepted but not yet in Slurm, per caller, before 429.",
    )
    retry_after_seconds: int = Field(default=10, ge=1, description="Retry-After of a 429.")


class JobWorkerSettings(CommonSettings):
    """The job worker function."""

    agent_timeout_seconds: int = Field(
        default=120, ge=5, le=800, description="How long one head-node command may take."
    )
    submit_concurrency: int = Field(
        default=4,
        ge=1,
        le=16,
        description=(
            "sbatch processes in flight on a head node within one chunk. One chunk is submitted "
            "at a time per head node (the agent's lock): this is the broker's pacing of slurmctld."
        ),
    )
    ssm_poll_seconds: float = Field(default=1.0, gt=0, description="SSM invocation poll period.")
    staging_bucket: str | None = Field(
        default=None, description="S3 bucket for payloads and answers too large to go inline."
    )
    retry_base_seconds: int = Field(
        default=2, ge=0, description="First retry delay after a transient error (doubles)."
    )
    retry_max_seconds: int = Field(default=300, ge=0, le=43200, description="Retry delay cap.")
    default_working_directory: str = Field(
        default="/tmp",  # noqa: S108 - exists on every node; jobs name their own directory
        pattern=r"^/[^\x00\n\r]*$",
        description="--chdir for jobs that name no working_directory (where slurm-<id>.out goes).",
    )
    local_agent_python: str = Field(
        default="", description="Python for the local runner's agent (default: this one)."
    )
    topic_arn: str = Field(description="SNS topic for notifications.")
    coalesce_submissions: bool = Field(
        default=True,
        description="Single submissions drained together for one cluster share one head-node "
        "command (false: one command each, the benchmark's baseline).",
    )


class SweeperSettings(JobWorkerSettings):
    """The sweeper function."""

    sweep_interval_seconds: float = Field(
        default=15, gt=0, description="Seconds between sweeps within one invocation."
    )
    sweep_window_seconds: float = Field(
        default=0,
        ge=0,
        description="How long one invocation keeps sweeping (0: a single sweep). EventBridge "
        "fires at most once a minute; sweeping every 15 s for 50 s lowers notification latency.",
    )
    queue_url: str = Field(
        description="URL of the requests queue (to send again the message of a request whose "
        "message was lost)."
    )
    requeue_after_seconds: int = Field(
        default=600,
        ge=60,
        description="A job.submit, job.cancel or job.output request still ACCEPTED, with no "
        "delivery, this long after it was accepted has lost its queue message (the API died "
        "between its write and its send): the sweep sends it again, at most once per this "
        "period. Keep it above the longest healthy queue wait (a duplicate is harmless, but "
        "wasted). Batches are not re-sent.",
    )
    requeue_max_per_sweep: int = Field(
        default=100, ge=1, description="Most lost messages one sweep sends again."
    )
    batch_lost_after_seconds: int = Field(
        default=3600,
        ge=300,
        description="A batch chunk message that no worker started this long after its batch "
        "was accepted counts as lost (the API died before or while sending the batch's "
        "chunks): the sweep fails its items (their specs were only in the message; the caller "
        "sends them again), releasing their back-pressure reservations, and ends the batch if "
        "it was the last. A healthy chunk starts within seconds: its first delivery is never "
        "delayed by other messages' retries. A job worker unable to start chunks for this "
        "long (an outage) has its waiting chunks failed too.",
    )


class ClusterWorkerSettings(CommonSettings):
    """The cluster worker function (and the DLQ path of cluster operations)."""

    topic_arn: str = Field(description="SNS topic for notifications.")
    retry_base_seconds: int = Field(
        default=5, ge=0, description="First retry delay after a transient error (doubles)."
    )
    retry_max_seconds: int = Field(default=300, ge=0, le=43200, description="Retry delay cap.")
    region: str | None = Field(
        default=None,
        validation_alias="AWS_REGION",
        description="Region of clusters whose request names none (Lambda sets AWS_REGION).",
    )


@lru_cache(maxsize=1)
def cluster_worker_settings() -> ClusterWorkerSettings:
    """The cluster worker's settings (validated once)."""
    return ClusterWorkerSettings()


@lru_cache(maxsize=1)
def identity_settings() -> IdentitySettings:
    """The identity settings (cached)."""
    return IdentitySettings()


@lru_cache(maxsize=1)
def page_token_settings() -> PageTokenSettings:
    """Where the API's page-token key comes from (validated once; needs no other setting)."""
    return PageTokenSettings()


@lru_cache(maxsize=1)
def api_settings() -> ApiSettings:
    """The API function's settings (validated once)."""
    return ApiSettings()


@lru_cache(maxsize=1)
def job_worker_settings() -> JobWorkerSettings:
    """The job worker's settings (validated once)."""
    return JobWorkerSettings()


@lru_cache(maxsize=1)
def sweeper_settings() -> SweeperSettings:
    """The sweeper's settings (validated once)."""
    return SweeperSettings()
