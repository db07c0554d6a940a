"""Cluster bodies, the cluster worker's message, results and views."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from broker.clusters.records import (
    ClusterFailure,
    ClusterOperation,
    ClusterRecord,
    ClusterStatus,
    ComputeFleetStatus,
    ValidationMessage,
)
from broker.schema import ClusterName, StrictModel

ClusterKind = Literal[
    "cluster.create", "cluster.update", "cluster.delete", "cluster.fleet", "cluster.describe"
]


class ClusterResult(BaseModel):
    """What a cluster operation ended with."""

    kind: ClusterKind
    cluster: str = Field(description="Cluster name.")
    status: ClusterStatus | None = Field(
        default=None, description="The cluster's status at the end (none for a dry run)."
    )
    compute_fleet_status: ComputeFleetStatus | None = None
    dryrun: bool = Field(
        default=False, description="True: a dry run that would have succeeded; nothing changed."
    )
    message: str | None = None
    validation_messages: list[ValidationMessage] = Field(
        default_factory=list, description="Validator findings (warnings, info) on success."
    )
    change_set: list[dict[str, Any]] | None = Field(
        default=None, description="An update's changes (dry run of an update)."
    )


#: Largest cluster configuration accepted, in UTF-8 bytes (it travels in one SQS message).
MAX_CLUSTER_CONFIG_BYTES = 128 * 1024


Region = Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]$")]


#: pcluster's --suppress-validators values: ALL, or type:<ValidatorName>.
SuppressValidator = Annotated[
    str, StringConstraints(pattern=r"^(ALL|type:[A-Za-z0-9]{1,128}|id:[A-Za-z0-9_.-]{1,128})$")
]


FailureLevel = Literal["INFO", "WARNING", "ERROR"]


def _configuration_field() -> Any:
    return Field(
        min_length=1,
        max_length=MAX_CLUSTER_CONFIG_BYTES,
        pattern=r"^[^\x00]*$",
        description="The ParallelCluster 3 configuration, as YAML text without NUL "
        f"(at most {MAX_CLUSTER_CONFIG_BYTES} bytes).",
    )


class ClusterCreateBody(StrictModel):
    """Create a cluster (``POST /v1/clusters``)."""

    name: ClusterName = Field(
        description="Cluster name: a letter, then letters, digits and hyphens, at most 60 "
        "(ParallelCluster's rule; 40 with Slurm accounting, checked by its validators)."
    )
    configuration: str = _configuration_field()
    region: Region | None = Field(default=None, description="AWS region (default: the broker's).")
    dryrun: bool = Field(
        default=False, description="Validate only; the request ends SUCCEEDED with dryrun: true."
    )
    rollback_on_failure: bool = Field(
        default=True, description="Roll the stack back if creation fails."
    )
    suppress_validators: list[SuppressValidator] | None = Field(
        default=None, max_length=50, description="Validators to skip: 'ALL' or 'type:<Name>'."
    )
    validation_failure_level: FailureLevel | None = Field(
        default=None, description="Lowest finding level that fails the request (pcluster: ERROR)."
    )

    @field_validator("configuration")
    @classmethod
    def _configuration_size(cls, value: str) -> str:
        return _check_configuration(value)


class ClusterUpdateBody(StrictModel):
    """Update a cluster (``PUT /v1/clusters/{name}``)."""

    configuration: str = _configuration_field()
    region: Region | None = Field(default=None, description="AWS region (default: the broker's).")
    dryrun: bool = Field(default=False, description="Validate and list the changes only.")
    force_update: bool = Field(
        default=False, description="Apply even if some update validators object (pcluster's)."
    )
    suppress_validators: list[SuppressValidator] | None = Field(
        default=None, max_length=50, description="Validators to skip: 'ALL' or 'type:<Name>'."
    )
    validation_failure_level: FailureLevel | None = Field(
        default=None, description="Lowest finding level that fails the request."
    )

    @field_validator("configuration")
    @classmethod
    def _configuration_size(cls, value: str) -> str:
        return _check_configuration(value)


def _check_configuration(value: str) -> str:
    if len(value.encode("utf-8")) > MAX_CLUSTER_CONFIG_BYTES:
        raise ValueError(f"the configuration is over {MAX_CLUSTER_CONFIG_BYTES} bytes")
    return value


class FleetBody(StrictModel):
    """Start or stop a cluster's compute fleet (``POST /v1/clusters/{name}/fleet``)."""

    status: Literal["START_REQUESTED", "STOP_REQUESTED"] = Field(
        description="START_REQUESTED: start the compute fleet; STOP_REQUESTED: stop it."
    )


class ClusterMessage(BaseModel):
    """Queue message: one cluster operation for the cluster worker."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    kind: ClusterKind
    request_id: str
    owner: str
    cluster: str
    region: str | None = None
    configuration: str | None = None
    dryrun: bool = False
    rollback_on_failure: bool = True
    force_update: bool = False
    suppress_validators: list[str] | None = None
    validation_failure_level: FailureLevel | None = None
    fleet_status: Literal["START_REQUESTED", "STOP_REQUESTED"] | None = None

    @property
    def operation(self) -> ClusterOperation:
        """The cluster operation (``create`` for ``cluster.create``, ...)."""
        operation: ClusterOperation = self.kind.split(".", 1)[1]  # type: ignore[assignment]
        return operation


class LastOperation(BaseModel):
    """The last operation started on a cluster through the broker."""

    operation: ClusterOperation
    request_id: str
    location: str = Field(description="GET it for the operation's outcome.")
    pending: bool = Field(description="Whether it is still in progress.")


class ClusterView(BaseModel):
    """A cluster as the broker knows it (``GET /v1/clusters/{name}``), from its record."""

    name: str
    status: ClusterStatus = Field(description="ParallelCluster's clusterStatus.")
    region: str | None = None
    version: str | None = Field(default=None, description="ParallelCluster version.")
    scheduler: str | None = None
    head_node_instance_id: str | None = None
    compute_fleet_status: ComputeFleetStatus | None = None
    provider: str | None = Field(
        default=None, description="'pcluster', or 'local-simulation' on the local stack."
    )
    last_operation: LastOperation
    failures: list[ClusterFailure] = Field(default_factory=list)
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, record: ClusterRecord) -> ClusterView:
        """The public view of a record (the owner stays private)."""
        return cls(
            name=record.name,
            status=record.status,
            region=record.region,
            version=record.version,
            scheduler=record.scheduler,
            head_node_instance_id=record.head_node_instance_id,
            compute_fleet_status=record.compute_fleet_status,
            provider=record.provider,
            last_operation=LastOperation(
                operation=record.operation,
                request_id=record.operation_request_id,
                location=f"/v1/requests/{record.operation_request_id}",
                pending=record.pending_request_id is not None,
            ),
            failures=record.failures,
            created_at=record.created_at,
            updated_at=record.updated_at,
        )


class ClusterList(BaseModel):
    """A page of your clusters."""

    clusters: list[ClusterView]
    next_token: str | None = Field(default=None, description="Pass it to get the next page.")
