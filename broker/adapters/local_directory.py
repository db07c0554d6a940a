"""The clusters of local mode: named clusters served by this machine's Slurm."""

from __future__ import annotations

from broker.errors import ClusterNotFoundError
from broker.ports import ClusterRecords, ClusterTarget

#: The provider name of clusters the local simulation created (broker.local.cluster_provider).
SIMULATED_PROVIDER = "local-simulation"


class LocalClusterDirectory:
    """``ClusterDirectory`` for local mode: every known name is this machine's Slurm.

    Args:
        names: the cluster names served locally (settings ``HPCB_LOCAL_CLUSTERS``).
        records: cluster records; a cluster the local simulation created is served by this
            machine's Slurm too, while its record says it is usable (CREATE_COMPLETE, UPDATE_*).
    """

    def __init__(self, names: frozenset[str], records: ClusterRecords | None = None) -> None:
        self._names = frozenset(names)
        self._records = records

    def resolve(self, cluster: str) -> ClusterTarget:
        """Return the local target for a known name.

        Raises:
            ClusterNotFoundError: the name is not one of the local clusters.
        """
        if cluster in self._names:
            return ClusterTarget(name=cluster, mode="local")
        record = self._records.get_cluster(cluster) if self._records is not None else None
        if record is not None and record.provider == SIMULATED_PROVIDER and record.status.usable:
            return ClusterTarget(name=cluster, mode="local")
        raise ClusterNotFoundError(f"no cluster named {cluster!r}")
