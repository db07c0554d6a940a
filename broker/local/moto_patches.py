"""Make moto's DynamoDB safe to call from many threads at once (local stack and tests only).

moto 5.2.5 runs TransactWriteItems by deep-copying the table it writes, and a concurrent write
to that table from another request thread makes the copy fail ("dictionary changed size during
iteration", an HTTP 500 to the caller). In the local stack the API, the workers, the pollers
and the sweeper all run as threads of one process, so DynamoDB requests are serialized here -
moto is an in-process emulator; real DynamoDB needs nothing of the kind.

Also measured (moto 5.2.5, over HTTP): a 25-item transaction costs 36 ms on an empty table,
383 ms at 630 items and 1.7 s at 2,760 - the copy makes it O(table). Keep local data sets small
where transactions are involved; real DynamoDB prices transactions per item.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

_lock = threading.RLock()
_applied = False


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
