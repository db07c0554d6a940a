"""Clusters: ParallelCluster clusters the broker creates, changes and deletes.

Owns the cluster record, ParallelCluster's statuses and the rules of which operation may start
from which status (``records``), the API's accept of cluster operations and the gate job
submission asks (``service``), and the cluster worker's one provider call per operation
(``worker``). Following an accepted operation to its end is the sweep's (``broker.sweep``).

The package exposes the record-level names; import services from their modules.
"""

from broker.clusters.records import (
    ACCEPTS_JOBS,
    DELETABLE,
    OPERATION_STATUSES,
    TRANSITIONS,
    UPDATABLE,
    ClusterFailure,
    ClusterInfo,
    ClusterOperation,
    ClusterRecord,
    ClusterStatus,
    ComputeFleetStatus,
    ConfigurationRejectedError,
    ProviderAnswer,
    StackObservation,
    ValidationMessage,
    can_transition,
    cluster_status_of_stack,
    ensure_can_start,
    ensure_ready,
    not_ready,
    outcome_of,
)

__all__ = [
    "ACCEPTS_JOBS",
    "DELETABLE",
    "OPERATION_STATUSES",
    "TRANSITIONS",
    "UPDATABLE",
    "ClusterFailure",
    "ClusterInfo",
    "ClusterOperation",
    "ClusterRecord",
    "ClusterStatus",
    "ComputeFleetStatus",
    "ConfigurationRejectedError",
    "ProviderAnswer",
    "StackObservation",
    "ValidationMessage",
    "can_transition",
    "cluster_status_of_stack",
    "ensure_can_start",
    "ensure_ready",
    "not_ready",
    "outcome_of",
]
