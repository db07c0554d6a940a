"""Batches: a burst of up to 10,000 jobs accepted as one request.

Owns the items of a batch before they have records (``items``: ids, chunks, the SUBMITTING view
of an unrecorded item), the accept that validates and chunks a burst (``accept``), the records
of items leaving SUBMITTING and the end of a batch (``outcomes``), and the job worker's
submission of chunks, one head-node command for one or several chunks (``dispatch``).

The package exposes the item-level names; import services from their modules.
"""

from broker.batches.items import (
    BATCH_INDEX,
    PREFIX_CHARS,
    batch_id_of,
    chunk_item_ids,
    chunk_of,
    item_id,
    lost_item,
    unrecorded_item,
)

__all__ = [
    "BATCH_INDEX",
    "PREFIX_CHARS",
    "batch_id_of",
    "chunk_item_ids",
    "chunk_of",
    "item_id",
    "lost_item",
    "unrecorded_item",
]
