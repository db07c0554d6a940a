"""HTTP for the client: the standard library's, signed with SigV4 by botocore in AWS.

The transport is the one seam a test replaces (see ``tests/functional/test_client_faults.py``):
everything above it works on :class:`HttpAnswer`, and every way a connection can fail becomes
:class:`ConnectionFailedError`.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Protocol

from broker.client.errors import ConfigurationError, ConnectionFailedError, api_error

#: The local stack's stand-in for SigV4: the caller's IAM ARN (ignored by API Gateway in AWS).
LOCAL_PRINCIPAL_HEADER = "X-Hpcb-Local-Principal"


@dataclass(frozen=True)
class HttpAnswer:
    """One HTTP answer: status, headers (as sent) and the raw body."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """A header's value, by case-insensitive name."""
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None

    def json(self) -> Any:
        """The decoded JSON body ({} when empty)."""
        return json.loads(self.body or b"{}")


class Transport(Protocol):
    """Sends one HTTP request and returns its answer, whatever its status."""

    def send(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> HttpAnswer:
        """Raises ConnectionFailedError when no answer came back."""
        ...


class UrllibTransport:
    """The standard library's HTTP client; one connection per call (thread-safe)."""

    def __init__(self, timeout: float = 30.0) -> None:
        self.timeout = timeout

    def send(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> HttpAnswer:
        request = urllib.request.Request(url, data=body, method=method, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310
                return HttpAnswer(answer.status, dict(answer.headers.items()), answer.read())
        except urllib.error.HTTPError as exc:
            return HttpAnswer(exc.code, dict(exc.headers.items()), exc.read())
        except (OSError, http.client.HTTPException) as exc:  # URLError, resets, timeouts
            raise ConnectionFailedError(f"{method} {url}: {exc}") from exc


class Signer(Protocol):
    """Adds authentication headers to a request about to be sent."""

    def headers(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> dict[str, str]: ...


class SigV4Signer:
    """SigV4 for API Gateway's IAM authorization (service ``execute-api``), through botocore.

    Credentials come from botocore's usual chain (environment, profile, SSO, instance role);
    they are refreshed by botocore when they expire.
    """

    def __init__(self, *, region: str | None = None, profile: str | None = None) -> None:
        import botocore.session  # noqa: PLC0415 - only needed when signing

        session = botocore.session.Session(profile=profile)
        credentials = session.get_credentials()
        if credentials is None:
            raise ConfigurationError(
                "no AWS credentials to sign with (aws configure, or a profile)"
            )
        self._credentials = credentials
        self.region = region or session.get_config_variable("region") or "us-east-1"

    def headers(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> dict[str, str]:
        from botocore.auth import SigV4Auth  # noqa: PLC0415
        from botocore.awsrequest import AWSRequest  # noqa: PLC0415

        request = AWSRequest(method=method, url=url, data=body, headers=headers)
        frozen = self._credentials.get_frozen_credentials()
        SigV4Auth(frozen, "execute-api", self.region).add_auth(request)
        return dict(request.headers.items())


class LocalPrincipalSigner:
    """The local stack's identity header (``X-Hpcb-Local-Principal: <IAM ARN>``)."""

    def __init__(self, principal: str) -> None:
        self.principal = principal

    def headers(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> dict[str, str]:
        return {**headers, LOCAL_PRINCIPAL_HEADER: self.principal}


def raise_for_status(answer: HttpAnswer) -> Any:
    """The decoded body of a 2xx answer; otherwise the matching ApiError."""
    try:
        decoded = answer.json()
    except ValueError:
        text = answer.body.decode(errors="replace")
        decoded = {"error": {"code": f"HTTP_{answer.status}", "message": text[:500]}}
    if 200 <= answer.status < 300:
        return decoded
    body = decoded if isinstance(decoded, dict) else {"error": {"message": str(decoded)}}
    raise api_error(answer.status, body, answer.headers)
