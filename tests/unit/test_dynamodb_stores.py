"""The DynamoDB adapter is one store per capability over one shared table helper.

Each capability store implements its whole port on its own (a service that needs one port can
get that store alone), and the one object the multi-port services get adds nothing of its own.
No network: the stores are only inspected, never called.
"""

from __future__ import annotations

import pytest

from broker.adapters.dynamodb import (
    DynamoAttentionIndex,
    DynamoBatchStore,
    DynamoClusterStore,
    DynamoJobStore,
    DynamoRequestStore,
    DynamoStore,
)
from broker.ports import AttentionIndex, BatchStore, ClusterStore, JobStore, RequestStore

PORTS: dict[type, type] = {
    DynamoRequestStore: RequestStore,
    DynamoJobStore: JobStore,
    DynamoBatchStore: BatchStore,
    DynamoAttentionIndex: AttentionIndex,
    DynamoClusterStore: ClusterStore,
}


def _members(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


@pytest.mark.parametrize("store", PORTS, ids=lambda cls: cls.__name__)
def test_each_capability_store_implements_every_member_of_its_port(store: type) -> None:
    # GIVEN a capability store and the port it stands for
    port = PORTS[store]
    # WHEN comparing their public members
    missing = _members(port) - _members(store)
    # THEN the store has them all
    assert missing == set()


def test_the_combined_store_is_the_capability_stores_and_nothing_more() -> None:
    # GIVEN the store the multi-port services get
    # WHEN listing what it defines itself, and what two of its capability stores both define
    own = {name for name in vars(DynamoStore) if not name.startswith("__")}
    shared = [
        name
        for i, one in enumerate(PORTS)
        for other in list(PORTS)[i + 1 :]
        for name in _members(one) & _members(other)
    ]
    # THEN nothing: each method comes from exactly one capability store
    assert own == set()
    assert shared == []
