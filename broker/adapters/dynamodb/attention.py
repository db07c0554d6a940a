"""The AttentionIndex port on DynamoDB: what the sweep reads, the sparse index gsi2.

An item is in gsi2 exactly while it needs attention: written there while it is not final, or
final with its notification still to publish, and taken out by the conditional clear of that
notification (``clear_request_notification``, ``clear_job_notification``). So a sweep costs one
scan of active work, not of history. Clusters share the index (``DynamoClusterStore.
active_clusters`` reads their part); this reader keeps jobs, requests, and the sweep chunks
some of whose items still read from their arrays (``settle_chunk`` takes them out).

The index is read eventually consistently and sweeps may overlap: nothing read here decides a
write. Every repair the sweep makes from it is a conditional write of its own (``claim_requeue``,
``reap_chunk``, ``update_job``), and that condition decides.
"""

from __future__ import annotations

from broker.adapters.dynamodb.table import TableStore, job_of, record_of, submitted_chunk_of
from broker.batches.arrays import SubmittedChunk
from broker.jobs.records import JobRecord
from broker.requests.models import RequestRecord


class DynamoAttentionIndex(TableStore):
    """AttentionIndex on DynamoDB."""

    def attention(
        self,
    ) -> tuple[list[JobRecord], list[RequestRecord], list[SubmittedChunk]]:
        """Every item in the sparse attention index (jobs, requests, sweep chunks)."""
        jobs: list[JobRecord] = []
        requests: list[RequestRecord] = []
        chunks: list[SubmittedChunk] = []
        for item in self._table.scan_index("gsi2", "scan gsi2"):
            pk = item["pk"]["S"]
            if pk.startswith("JOB#"):
                jobs.append(job_of(item))
            elif pk.startswith("REQ#"):
                requests.append(record_of(item))
            elif pk.startswith("CHUNK#") and (chunk := submitted_chunk_of(item)) is not None:
                chunks.append(chunk)
        return jobs, requests, chunks
