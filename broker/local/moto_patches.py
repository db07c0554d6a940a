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
"""

from __future__ import annotations

import copy
import functools
import threading
from typing import Any

_lock = threading.RLock()
_applied = False
_two_phase = False


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


def two_phase_transactions() -> None:
    """Replace moto's whole-table-copy TransactWriteItems with a per-item one (idempotent).

    Needs `serialize_dynamodb()`: between the check and the apply phase nothing else may write.
    """
    global _two_phase  # noqa: PLW0603 - a process-wide patch, applied once
    if _two_phase:
        return
    serialize_dynamodb()
    # Local/test only: moto is not a dependency of the deployed functions.
    from moto.dynamodb.comparisons import get_filter_expression  # noqa: PLC0415
    from moto.dynamodb.exceptions import (  # noqa: PLC0415
        ConditionalCheckFailed,
        MultipleTransactionsException,
        TooManyTransactionsException,
        TransactionCanceledException,
        TransactWriteSingleOpException,
    )
    from moto.dynamodb.models import DynamoDBBackend  # noqa: PLC0415

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        if len(transact_items) > 100:  # noqa: PLR2004 - DynamoDB's documented limit
            raise TooManyTransactionsException
        steps: list[tuple[str, dict[str, Any], str, dict[str, Any]]] = []
        targets: set[tuple[str, str]] = set()
        for entry in transact_items:
            if len(entry) != 1:
                raise TransactWriteSingleOpException
            op_type, op = next(iter(entry.items()))
            table_name = op["TableName"]
            if op_type == "Put":
                table = self.get_table(table_name)
                names = [table.hash_key_attr] + (
                    [table.range_key_attr] if table.range_key_attr else []
                )
                key = {name: op["Item"][name] for name in names if name in op["Item"]}
            else:
                key = op["Key"]
            target = (table_name, repr(sorted(key.items())))
            if target in targets:
                raise MultipleTransactionsException
            targets.add(target)
            steps.append((op_type, op, table_name, key))

        # Phase 1: every condition against the state before the transaction.
        reasons: list[tuple[Any, Any, Any]] = []
        for _, op, table_name, key in steps:
            current = self.get_item(table_name, key)
            condition = op.get("ConditionExpression")
            passed = condition is None or get_filter_expression(
                condition, op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
            ).expr(current)
            if passed:
                reasons.append((None, None, None))
                continue
            old = None
            if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
                old = current.to_json()["Attributes"]
            failure = ConditionalCheckFailed(item=old)
            reasons.append(("ConditionalCheckFailed", failure.message, old))
        if any(code is not None for code, _, _ in reasons):
            raise TransactionCanceledException(reasons)

        # Phase 2: apply, restoring the touched items if a step is rejected (e.g. validation).
        saved: list[tuple[Any, Any, Any, Any]] = []
        try:
            for op_type, op, table_name, key in steps:
                if op_type == "ConditionCheck":
                    continue
                table = self.get_table(table_name)
                hash_value, range_value = self.get_keys_value(table, key)
                before = table.get_item(hash_value, range_value)
                saved.append((table, hash_value, range_value, copy.deepcopy(before)))
                names = op.get("ExpressionAttributeNames")
                values = op.get("ExpressionAttributeValues")
                if op_type == "Put":
                    self.put_item(
                        table_name,
                        op["Item"],
                        expression_attribute_names=names,
                        expression_attribute_values=values,
                    )
                elif op_type == "Delete":
                    self.delete_item(table_name, key)
                else:
                    self.update_item(
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

    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    _two_phase = True


def _restore(table: Any, hash_value: Any, range_value: Any, item: Any) -> None:
    if item is None:
        table.delete_item(hash_value, range_value)
    elif range_value is not None:
        table.items[hash_value][range_value] = item
    else:
        table.items[hash_value] = item
