"""Make moto's DynamoDB safe to call from many threads at once (local stack and tests only).

moto 5.2.5 runs TransactWriteItems by deep-copying the table it writes, and a concurrent write
to that table from another request thread makes the copy fail ("dictionary changed size during
iteration", an HTTP 500 to the caller). In the local stack the API, the workers, the pollers
and the sweeper all run as threads of one process, so DynamoDB requests are serialized here -
moto is an in-process emulator; real DynamoDB needs nothing of the kind.

The deep copy also makes a transaction O(table) (moto 5.2.5, over HTTP: a 25-item transaction
costs 36 ms on an empty table, 383 ms at 630 items and 1.7 s at 2,760), which rules out a
10,000-job burst locally. `two_phase_transactions` replaces that one method: with requests
serialized, it checks every condition against the state before the transaction (as DynamoDB
does), and only when all pass applies the writes, keeping copies of just the touched items to
restore if an apply step fails. Cost is per item, like the real service's.

And moto builds every stored item attribute by attribute, re-measuring the whole item at each
step (quadratic in the attribute count: 0.8 ms per 20-attribute job record, most of a 10,000-job
burst's accept time). `linear_item_size` measures once, with the same 405,000-byte limit.

And moto's server finds the backend of every request by listing its own package directory
and trying every service's URL patterns, under one lock: about 2.5 ms a request, half of a
10,000-job accept. `cache_backend_lookup` remembers the answer per host (it never changes).

And moto's SQS queue keeps its messages in a list that a delete rebuilds from a snapshot without
the queue's lock, while a send, or the move of a message to its dead-letter queue during a
receive, appends to it under the lock: a message appended meanwhile is dropped with the old list
(found by the chaos run: a poison message moved to the DLQ while the DLQ worker deleted another
dead letter was never delivered; a message sent while a poller deleted its batch was never
received). `locked_sqs_queues` makes deletes and receives take the queue's lock too.

`patch_moto()` applies them all.
"""

from __future__ import annotations

import copy
import functools
import json
import threading
from typing import Any

_lock = threading.RLock()
_applied = False
_two_phase = False
_linear = False
_cached = False
_sqs_locked = False
#: moto's item size limit (DynamoDB's is 400 KB; moto measured it between 409 and 410 KB).
ITEM_SIZE_LIMIT = 405_000
#: DynamoDB's documented limit of items per transaction.
MAX_TRANSACTION_ITEMS = 100


def serialize_dynamodb() -> None:
    """Wrap moto's DynamoDB request handler in one lock (idempotent)."""
    global _applied  # noqa: PLW0603 - a process-wide patch, applied once
    if _applied:
        return
    from moto.dynamodb.responses import DynamoHandler  # noqa: PLC0415 - local/test only

    original = DynamoHandler.call_action

    @functools.wraps(original)
    def call_action(self: Any) -> Any:
        with _lock:
            return original(self)

    DynamoHandler.call_action = call_action  # type: ignore[method-assign]
    _applied = True


def patch_moto() -> None:
    """Every patch of this module (idempotent)."""
    serialize_dynamodb()
    two_phase_transactions()
    linear_item_size()
    cache_backend_lookup()
    locked_sqs_queues()


def locked_sqs_queues() -> None:
    """Make moto's SQS deletes and receives take their queue's lock (idempotent).

    Why both: a delete rebuilds the queue's message list, and a receive removes the messages it
    moves to the dead-letter queue from it; an append (a send, a move into this queue) made
    between the snapshot and the assignment would be lost. The lock is a ``Condition`` on an
    ``RLock``: a long poll's wait inside a receive releases it, so receives do not block sends.
    """
    global _sqs_locked  # noqa: PLW0603 - a process-wide patch, applied once
    if _sqs_locked:
        return
    from moto.sqs.models import Queue, SQSBackend  # noqa: PLC0415 - local/test only

    delete = Queue.delete_message
    receive = SQSBackend.receive_message

    @functools.wraps(delete)
    def delete_message(self: Any, receipt_handle: str) -> None:
        with self._messages_lock:
            delete(self, receipt_handle)

    @functools.wraps(receive)
    def receive_message(self: Any, queue_name: str, *args: Any, **kwargs: Any) -> Any:
        with self.get_queue(queue_name)._messages_lock:
            return receive(self, queue_name, *args, **kwargs)

    Queue.delete_message = delete_message  # type: ignore[method-assign]
    SQSBackend.receive_message = receive_message  # type: ignore[method-assign]
    _sqs_locked = True


def cache_backend_lookup() -> None:
    """Remember which moto backend serves each host name (idempotent)."""
    global _cached  # noqa: PLW0603 - a process-wide patch, applied once
    if _cached:
        return
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication  # noqa: PLC0415

    original = DomainDispatcherApplication.get_backend_for_host
    known: dict[str | None, Any] = {}

    def get_backend_for_host(self: Any, host: str | None) -> Any:
        # Called with the dispatcher's lock held: no race on ``known``.
        if host not in known:
            known[host] = original(self, host)
        return known[host]

    DomainDispatcherApplication.get_backend_for_host = get_backend_for_host  # type: ignore[method-assign]
    _cached = True


def linear_item_size() -> None:
    """Build moto's stored items in one pass, checking their size once (idempotent)."""
    global _linear  # noqa: PLW0603 - a process-wide patch, applied once
    if _linear:
        return
    # Local/test only: moto is not a dependency of the deployed functions.
    from moto.dynamodb.exceptions import ItemSizeTooLarge  # noqa: PLC0415
    from moto.dynamodb.models.dynamo_type import DynamoType, Item, LimitedSizeDict  # noqa: PLC0415
    from moto.dynamodb.models.utilities import bytesize  # noqa: PLC0415

    def item_init(self: Any, hash_key: Any, range_key: Any, attrs: dict[str, Any]) -> None:
        self.hash_key = hash_key
        self.range_key = range_key
        converted = {key: DynamoType(value) for key, value in attrs.items()}
        size = sum(bytesize(key) + value.size() for key, value in converted.items())
        if size > ITEM_SIZE_LIMIT:
            raise ItemSizeTooLarge
        self.attrs = LimitedSizeDict()
        dict.update(self.attrs, converted)  # later updates still go through its size check

    Item.__init__ = item_init  # type: ignore[method-assign]
    _linear = True


def two_phase_transactions() -> None:
    """Replace moto's whole-table-copy TransactWriteItems with a per-item one (idempotent).

    Needs `serialize_dynamodb()`: between the check and the apply phase nothing else may write.
    """
    global _two_phase  # noqa: PLW0603 - a process-wide patch, applied once
    if _two_phase:
        return
    serialize_dynamodb()
    from moto.dynamodb.models import DynamoDBBackend  # noqa: PLC0415 - local/test only

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        steps = _steps(self, transact_items)
        _check(self, steps)
        _apply(self, steps)

    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    _two_phase = True


_Step = tuple[str, dict[str, Any], str, dict[str, Any]]  # (operation, its body, table, key)


def _steps(backend: Any, transact_items: list[dict[str, Any]]) -> list[_Step]:
    """The operations with their keys; the request's own validation errors."""
    from moto.dynamodb.exceptions import (  # noqa: PLC0415 - local/test only
        MultipleTransactionsException,
        TooManyTransactionsException,
        TransactWriteSingleOpException,
    )

    if len(transact_items) > MAX_TRANSACTION_ITEMS:
        raise TooManyTransactionsException
    steps: list[_Step] = []
    targets: set[tuple[str, str]] = set()
    for entry in transact_items:
        if len(entry) != 1:
            raise TransactWriteSingleOpException
        op_type, op = next(iter(entry.items()))
        table_name = op["TableName"]
        if op_type == "Put":
            table = backend.get_table(table_name)
            names = [table.hash_key_attr, table.range_key_attr]
            key = {name: op["Item"][name] for name in names if name and name in op["Item"]}
        else:
            key = op["Key"]
        target = (table_name, repr(sorted(key.items())))
        if target in targets:
            raise MultipleTransactionsException
        targets.add(target)
        steps.append((op_type, op, table_name, key))
    return steps


def _check(backend: Any, steps: list[_Step]) -> None:
    """Phase 1: every condition against the state before the transaction (as DynamoDB does)."""
    from moto.dynamodb.comparisons import get_filter_expression  # noqa: PLC0415
    from moto.dynamodb.exceptions import (  # noqa: PLC0415
        ConditionalCheckFailed,
        TransactionCanceledException,
    )

    reasons: list[tuple[Any, Any, Any]] = []
    for _, op, table_name, key in steps:
        current = backend.get_item(table_name, key)
        condition = op.get("ConditionExpression")
        names, values = op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
        if condition is None or _parsed(get_filter_expression, condition, names, values)(current):
            reasons.append((None, None, None))
            continue
        old = None
        if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
            old = current.to_json()["Attributes"]
        reasons.append(("ConditionalCheckFailed", ConditionalCheckFailed(item=old).message, old))
    if any(code is not None for code, _, _ in reasons):
        raise TransactionCanceledException(reasons)


#: Parsed condition expressions (moto parses each anew: half of a conditional Put's cost, 0.24
#: of 0.50 ms an item measured here); at most this many kept.
_PARSED: dict[str, Any] = {}
MAX_PARSED = 256


def _parsed(parse: Any, condition: str, names: Any, values: Any) -> Any:
    """The evaluator of a condition (a function of the current item), parsed once."""
    key = json.dumps([condition, names, values], sort_keys=True)
    found = _PARSED.get(key)
    if found is None:
        if len(_PARSED) >= MAX_PARSED:
            _PARSED.clear()
        found = _PARSED[key] = parse(condition, names, values).expr
    return found


def _apply(backend: Any, steps: list[_Step]) -> None:
    """Phase 2: the writes; if one is rejected (e.g. validation), the touched items are restored."""
    saved: list[tuple[Any, Any, Any, Any]] = []
    try:
        for op_type, op, table_name, key in steps:
            if op_type == "ConditionCheck":
                continue
            table = backend.get_table(table_name)
            hash_value, range_value = backend.get_keys_value(table, key)
            before = table.get_item(hash_value, range_value)
            saved.append((table, hash_value, range_value, copy.deepcopy(before)))
            names, values = op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
            if op_type == "Put":
                backend.put_item(
                    table_name,
                    op["Item"],
                    expression_attribute_names=names,
                    expression_attribute_values=values,
                )
            elif op_type == "Delete":
                backend.delete_item(table_name, key)
            else:
                backend.update_item(
                    table_name,
                    key,
                    update_expression=op["UpdateExpression"],
                    expression_attribute_names=names,
                    expression_attribute_values=values,
                )
    except Exception:
        for table, hash_value, range_value, before in reversed(saved):
            _restore(table, hash_value, range_value, before)
        raise


def _restore(table: Any, hash_value: Any, range_value: Any, item: Any) -> None:
    if item is None:
        table.delete_item(hash_value, range_value)
    elif range_value is not None:
        table.items[hash_value][range_value] = item
    else:
        table.items[hash_value] = item
