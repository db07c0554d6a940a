"""Test Lambda handlers for the local-stack tests (see local_stack_template.yaml).

They record what they receive, so tests can assert on the events the local stack builds and on
how often each message was delivered. A worker message's JSON body steers the outcome:
``{"id": ..., "fail_until": n, "mode": "report" | "raise"}`` fails the record while its
ApproximateReceiveCount is at most ``n`` — by listing it in ``batchItemFailures`` ("report") or
by raising for the whole batch ("raise").

``scheduled_handler`` records every scheduled invocation and how many ran at once; tests steer
it through :func:`set_schedule_mode` (sleep, raise) and read :func:`scheduled_calls`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import defaultdict
from typing import Any

# Read at import, as real handlers read their settings at cold start: the local stack must set
# the environment before it imports a handler.
COLD_START_ENV = {k: v for k, v in os.environ.items() if k.startswith("HPCB_TEST_")}

_lock = threading.Lock()
API_EVENTS: list[dict[str, Any]] = []
API_CONTEXTS: list[Any] = []
# message id in the body -> list of (function, ApproximateReceiveCount)
DELIVERIES: dict[str, list[tuple[str, int]]] = defaultdict(list)
WORKER_EVENTS: list[dict[str, Any]] = []
# (event, context) of each scheduled invocation, in the order they started.
SCHEDULED_CALLS: list[tuple[Any, Any]] = []
_schedule_mode: dict[str, Any] = {"sleep_s": 0.0, "raise": False}
_schedule_active = 0
_schedule_max_active = 0


def deliveries(message_id: str) -> list[tuple[str, int]]:
    """A copy of the deliveries of one test message."""
    with _lock:
        return list(DELIVERIES.get(message_id, []))


def api_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Echo what the proxy event says; the response exercises headers and multiValueHeaders."""
    with _lock:
        API_EVENTS.append(event)
        API_CONTEXTS.append(context)
    path = event["path"]
    if path == "/v1/boom":
        raise RuntimeError("handler failure (expected by the test)")
    if path == "/v1/malformed":
        return {"body": "no status code"}
    if path == "/v1/binary":
        return {
            "statusCode": 200,
            "headers": {"Content-Type": "application/octet-stream"},
            "body": "AAEC/w==",
            "isBase64Encoded": True,
        }
    body = {
        "path": path,
        "userArn": event["requestContext"]["identity"]["userArn"],
        "query": event["queryStringParameters"],
        "cold_start_env": COLD_START_ENV,
    }
    return {
        "statusCode": 201,
        "headers": {"Content-Type": "application/json", "X-Single": "one"},
        "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"], "X-Multi": ["x", "y"]},
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }


def _record(function: str, event: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    parsed = []
    with _lock:
        WORKER_EVENTS.append(event)
        for record in event["Records"]:
            body = json.loads(record["body"])
            count = int(record["attributes"]["ApproximateReceiveCount"])
            DELIVERIES[body["id"]].append((function, count))
            parsed.append((record, body))
    return parsed


def worker_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Fail records as their bodies ask; report failures or raise."""
    failures = []
    for record, body in _record("worker", event):
        count = int(record["attributes"]["ApproximateReceiveCount"])
        if count <= int(body.get("fail_until", 0)):
            if body.get("mode") == "raise":
                raise RuntimeError(f"message {body['id']} asked to fail (expected by the test)")
            failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}


def dlq_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Accept every dead letter."""
    _record("dlq", event)
    return {"batchItemFailures": []}


def set_schedule_mode(*, sleep_s: float = 0.0, fail: bool = False) -> None:
    """How the next scheduled invocations behave: sleep first, then raise or answer."""
    with _lock:
        _schedule_mode.update({"sleep_s": sleep_s, "raise": fail})


def reset_schedule() -> None:
    """Forget recorded scheduled calls and concurrency; back to the fast, succeeding mode."""
    global _schedule_max_active  # noqa: PLW0603 - test bookkeeping
    with _lock:
        SCHEDULED_CALLS.clear()
        _schedule_mode.update({"sleep_s": 0.0, "raise": False})
        _schedule_max_active = _schedule_active


def scheduled_calls() -> list[tuple[Any, Any]]:
    """A copy of the recorded (event, context) pairs."""
    with _lock:
        return list(SCHEDULED_CALLS)


def schedule_max_active() -> int:
    """The most scheduled invocations that ran at the same time since the last reset."""
    with _lock:
        return _schedule_max_active


def scheduled_handler(event: Any, context: Any) -> dict[str, Any]:
    """Record the call; sleep and/or raise as set; answer how many calls came before."""
    global _schedule_active, _schedule_max_active  # noqa: PLW0603 - test bookkeeping
    with _lock:
        _schedule_active += 1
        _schedule_max_active = max(_schedule_max_active, _schedule_active)
        SCHEDULED_CALLS.append((event, context))
        mode = dict(_schedule_mode)
        seen = len(SCHEDULED_CALLS)
    try:
        time.sleep(float(mode["sleep_s"]))
        if mode["raise"]:
            raise RuntimeError("scheduled handler asked to fail (expected by the test)")
        return {"call": seen}
    finally:
        with _lock:
            _schedule_active -= 1
