"""The clusters of local mode: named clusters served by this machine's Slurm."""

from __future__ import annotations

from broker.errors import ClusterNotFoundError
from broker.ports import ClusterTarget


class LocalClusterDirectory:
    """``ClusterDirectory`` for local mode: every known name is this machine's Slurm.

    Args:
        names: the cluster names served locally (settings ``HPCB_LOCAL_CLUSTERS``).
    """

    def __init__(self, names: frozenset[str]) -> None:
        self._names = frozenset(names)

    def resolve(self, cluster: str) -> ClusterTarget:
        """Return the local target for a known name.

        Raises:
            ClusterNotFoundError: the name is not one of the local clusters.
        """
        if cluster not in self._names:
            raise ClusterNotFoundError(f"no cluster named {cluster!r}")
        return ClusterTarget(name=cluster, mode="local")
