"""A small Python client for the hpc-broker API (stdlib HTTP; botocore signs in AWS).

    client = BrokerClient("https://abc.execute-api.eu-west-1.amazonaws.com/api", sign=True)
    accepted = client.submit_job("mycluster", {"script": "#!/bin/bash\\nhostname\\n"})
    final = client.wait(accepted["request_id"])

Against the local stack, pass ``principal=`` to act as a given IAM identity (the local stand-in
for SigV4; see broker/local/apigw.py).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

LOCAL_PRINCIPAL_HEADER = "X-Hpcb-Local-Principal"
FINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})


class ApiError(Exception):
    """A non-2xx answer: ``status`` and the decoded error body."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        super().__init__(f"HTTP {status}: {error.get('code')}: {error.get('message')}")
        self.status = status
        self.body = body
        self.headers = headers


class BrokerClient:
    """Calls the API; retries nothing by itself except in ``wait`` (polling)."""

    def __init__(
        self,
        base_url: str,
        *,
        principal: str | None = None,
        sign: bool = False,
        region: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._principal = principal
        self._sign = sign
        self._region = region
        self._timeout = timeout

    def submit_job(self, cluster: str, spec: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/clusters/{cluster}/jobs; returns the 202 body (request_id, status, location)."""
        return self.call("POST", f"/v1/clusters/{cluster}/jobs", spec)

    def get_request(self, request_id: str) -> dict[str, Any]:
        """GET /v1/requests/{request_id}."""
        return self.call("GET", f"/v1/requests/{request_id}")

    def wait(
        self,
        request_id: str,
        *,
        timeout: float = 120.0,
        first_poll: float = 0.1,
        max_poll: float = 2.0,
    ) -> dict[str, Any]:
        """Poll a request until it is final, backing off from ``first_poll`` to ``max_poll``.

        Raises:
            TimeoutError: not final within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        delay = first_poll
        while True:
            request = self.get_request(request_id)
            if request["state"] in FINAL_STATES:
                return request
            if time.monotonic() + delay > deadline:
                raise TimeoutError(
                    f"request {request_id} still {request['state']} after {timeout}s"
                )
            time.sleep(delay)
            delay = min(max_poll, delay * 1.5)

    def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """One API call; returns the decoded JSON body or raises ApiError."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self._principal:
            headers[LOCAL_PRINCIPAL_HEADER] = self._principal
        url = self.base_url + path
        if self._sign:
            headers = self._signed_headers(method, url, data, headers)
        request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as answer:  # noqa: S310
                return dict(json.loads(answer.read() or b"{}"))
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                decoded = json.loads(raw)
            except ValueError:
                decoded = {"error": {"code": "HTTP_ERROR", "message": raw.decode(errors="replace")}}
            raise ApiError(exc.code, decoded, dict(exc.headers.items())) from exc

    def _signed_headers(
        self, method: str, url: str, data: bytes | None, headers: dict[str, str]
    ) -> dict[str, str]:
        """SigV4-sign the call for API Gateway's IAM auth (botocore does the signing)."""
        import boto3  # noqa: PLC0415 - only needed when signing
        from botocore.auth import SigV4Auth  # noqa: PLC0415
        from botocore.awsrequest import AWSRequest  # noqa: PLC0415

        session = boto3.session.Session()
        credentials = session.get_credentials()
        if credentials is None:
            raise RuntimeError("no AWS credentials to sign with")
        region = self._region or session.region_name or "us-east-1"
        aws_request = AWSRequest(method=method, url=url, data=data, headers=headers)
        SigV4Auth(credentials.get_frozen_credentials(), "execute-api", region).add_auth(aws_request)
        return dict(aws_request.headers.items())
