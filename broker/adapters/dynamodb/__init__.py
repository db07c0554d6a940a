"""DynamoDB stores: one single table, one module per capability, one shared table helper.

table       keys, item layout, (de)serialization, paging tokens, and ``Table``: the only
            caller of the client (conditional writes, transactions, reads, paging)
requests    RequestStore: request items, moves along the request transition table
jobs        JobStore: job and alias items, moves in and out of SUBMITTING (with counters)
batches     BatchStore: batch requests, chunk markers, backlog counters, outcome counts
attention   AttentionIndex: the sparse index gsi2 the sweep reads
clusters    ClusterStore: cluster items, and the readiness check of job submissions
store       DynamoStore: all of the above over one table, for services that need several
"""

from broker.adapters.dynamodb.attention import DynamoAttentionIndex
from broker.adapters.dynamodb.batches import DynamoBatchStore
from broker.adapters.dynamodb.clusters import DynamoClusterStore
from broker.adapters.dynamodb.jobs import DynamoJobStore
from broker.adapters.dynamodb.requests import DynamoRequestStore
from broker.adapters.dynamodb.store import DynamoStore

__all__ = [
    "DynamoAttentionIndex",
    "DynamoBatchStore",
    "DynamoClusterStore",
    "DynamoJobStore",
    "DynamoRequestStore",
    "DynamoStore",
]
