"""The writes of a sweep chunk's marker: its recorded arrays and Slurm's word on their pending
tasks (item builders; ``DynamoBatchStore`` sends them).

Each array, and each array's pending word, is one entry of a map attribute on the marker
(``arrays``, ``pending``), keyed by the array's key and holding its JSON; the marker's
``start_chunk`` creates both maps, so a write only sets entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker.adapters.dynamodb.table import chunk_key
from broker.batches.arrays import PendingFields, SharedFields, SweepArray
from broker.requests.models import RequestRecord


def _entries(
    attribute: str, entries: Mapping[str, str]
) -> tuple[list[str], list[str], dict[str, str], dict[str, Any]]:
    """SET clauses writing ``entries`` (key -> JSON) into the map ``attribute``, the conditions
    that each is absent yet, and their placeholders."""
    names = {"#m": attribute}
    values: dict[str, Any] = {}
    sets, absent = [], []
    for i, (key, text) in enumerate(sorted(entries.items())):
        names[f"#k{i}"] = key
        values[f":v{i}"] = {"S": text}
        sets.append(f"#m.#k{i} = :v{i}")
        absent.append(f"attribute_not_exists(#m.#k{i})")
    return sets, absent, names, values


def arrays_update(
    table: str, batch: RequestRecord, chunk: int, arrays: list[SweepArray], shared: SharedFields
) -> dict[str, Any]:
    """The Update putting ``arrays`` on a started chunk's marker, each only if it has none
    under its key, and the marker in the attention index."""
    sets, absent, names, values = _entries("arrays", {a.key(): a.model_dump_json() for a in arrays})
    names.update({"#l": "lost", "#c": "cluster", "#s": "shared", "#gp": "gsi2pk", "#gs": "gsi2sk"})
    values.update({
        ":c": {"S": batch.cluster},
        ":s": {"S": shared.model_dump_json(exclude_none=True)},
        ":gp": {"S": f"ACTIVE#{batch.cluster}"},
        ":gs": {"S": f"CHUNK#{batch.request_id}#{chunk}"},
    })  # fmt: skip
    return {
        "TableName": table,
        "Key": chunk_key(batch.request_id, chunk),
        "UpdateExpression": "SET " + ", ".join(["#c = :c", "#s = :s", "#gp = :gp", "#gs = :gs",
                                                *sets]),
        "ConditionExpression": " AND ".join(["attribute_exists(pk)", "attribute_not_exists(#l)",
                                             *absent]),
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
    }  # fmt: skip


def pending_update(
    table: str, batch_id: str, chunk: int, pending: Mapping[str, PendingFields]
) -> dict[str, Any]:
    """The UpdateItem request writing arrays' pending words on a chunk's marker (if the marker
    is there: its ``pending`` map)."""
    texts = {key: fields.model_dump_json(exclude_none=True) for key, fields in pending.items()}
    sets, _, names, values = _entries("pending", texts)
    return {
        "TableName": table,
        "Key": chunk_key(batch_id, chunk),
        "UpdateExpression": "SET " + ", ".join(sets),
        "ConditionExpression": "attribute_exists(#m)",
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
    }
