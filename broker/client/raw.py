"""``RawClient``: the API's JSON as sent, in dicts, for tests and scripts that check the wire.

Typed code uses :class:`~broker.client.BrokerClient`. This keeps the first client's surface
(``submit_job``, ``get_request`` and ``wait`` returning decoded bodies, ``call`` for any route)
on the same transport, signing and back-off, so tests written against the JSON keep reading it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker.client.api import FINAL_REQUEST_STATES, BrokerClient
from broker.client.errors import ApiError
from broker.client.polling import poll_until

__all__ = ["ApiError", "RawClient"]


class RawClient:
    """Dict-returning calls; takes :class:`BrokerClient`'s arguments. ``typed`` is the client."""

    def __init__(self, endpoint: str, **options: Any) -> None:
        self.typed = BrokerClient(endpoint, **options)
        self.endpoint = self.typed.endpoint

    def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """One call; the decoded JSON body, or the matching ApiError."""
        return self.typed.call(method, path, body)

    def submit_job(self, cluster: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        """POST /v1/clusters/{cluster}/jobs; the 202 body."""
        return self.call("POST", f"/v1/clusters/{cluster}/jobs", dict(spec))

    def get_request(self, request_id: str) -> dict[str, Any]:
        """GET /v1/requests/{request_id}; the body."""
        return self.call("GET", f"/v1/requests/{request_id}")

    def wait(
        self,
        request_id: str,
        *,
        timeout: float = 120.0,
        first_poll: float | None = None,
        max_poll: float | None = None,
    ) -> dict[str, Any]:
        """Poll until the request is final (back-off and Retry-After as the typed client)."""
        typed = self.typed
        return poll_until(  # type: ignore[no-any-return]
            lambda: self.get_request(request_id),
            lambda r: r.get("state") in FINAL_REQUEST_STATES,
            what=f"request {request_id}",
            timeout=timeout,
            backoff=typed.poll_backoff(first_poll, max_poll),
            sleep=typed.sleep,
            rng=typed.rng,
        )
