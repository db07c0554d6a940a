"""One object over the table for the services that need several record ports at once.

The services' own protocols ask for intersections (``Dispatcher`` needs RequestStore, JobStore
and BatchStore together, the sweep adds AttentionIndex, the cluster services add ClusterStore),
and some writes span capabilities in one transaction (a batch job's outcome moves the job, the
backlog counters and the batch's counts). We chose to compose rather than keep one class: each
base is a complete capability store over the shared ``Table`` (``TableStore``'s constructor runs
once, so they share one), their method sets are disjoint, and no base calls another's methods;
a transaction that spans items is built by the store that owns its write (``jobs``, ``batches``)
from the other modules' item builders. A service that needs one port gets that store alone.
"""

from __future__ import annotations

from broker.adapters.dynamodb.attention import DynamoAttentionIndex
from broker.adapters.dynamodb.batches import DynamoBatchStore
from broker.adapters.dynamodb.clusters import DynamoClusterStore
from broker.adapters.dynamodb.jobs import DynamoJobStore
from broker.adapters.dynamodb.requests import DynamoRequestStore


class DynamoStore(
    DynamoRequestStore, DynamoJobStore, DynamoBatchStore, DynamoAttentionIndex, DynamoClusterStore
):
    """RequestStore, JobStore, BatchStore, AttentionIndex and ClusterStore over one table."""
