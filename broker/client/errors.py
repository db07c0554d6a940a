"""What the client raises: one base, one class per kind of answer a caller acts on differently."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.requests.models import RequestView


class ClientError(Exception):
    """Base of every error the client raises."""


class ConfigurationError(ClientError):
    """No endpoint could be found, or a configuration file or stack output is unusable."""


class ConnectionFailedError(ClientError):
    """The API could not be reached, or the connection dropped before an answer (transient)."""


class WaitTimeoutError(ClientError, TimeoutError):
    """A wait ended before what it waited for happened; ``last`` is the last thing read."""

    def __init__(self, message: str, last: Any = None) -> None:
        super().__init__(message)
        self.last = last


class RequestFailedError(ClientError):
    """A request ended FAILED (or not as expected); ``request`` is its final view."""

    def __init__(self, request: RequestView) -> None:
        error = request.error
        detail = f"{error.code}: {error.message}" if error else request.state
        super().__init__(f"request {request.request_id} {request.state}: {detail}")
        self.request = request


class ApiError(ClientError):
    """A non-2xx answer: ``status``, the decoded body, its error ``code`` and the headers."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        error = error if isinstance(error, dict) else {}
        self.status = status
        self.body = body
        self.headers = headers
        self.code = str(error.get("code") or f"HTTP_{status}")
        self.message = str(error.get("message") or "")
        self.transient = bool(error.get("transient", False))
        super().__init__(f"HTTP {status}: {self.code}: {self.message}")

    @property
    def retry_after(self) -> float | None:
        """Seconds from the ``Retry-After`` header (delta-seconds form only), if any."""
        for name, value in self.headers.items():
            if name.lower() == "retry-after":
                try:
                    return max(0.0, float(value))
                except ValueError:
                    return None
        return None

    @property
    def fields(self) -> list[dict[str, Any]]:
        """The bad fields the API listed (``[{field, message, type}]``)."""
        error = self.body.get("error", {}) if isinstance(self.body, dict) else {}
        found = error.get("fields", []) if isinstance(error, dict) else []
        return [f for f in found if isinstance(f, dict)]


class ForbiddenError(ApiError):
    """403: no authenticated identity."""


class NotFoundError(ApiError):
    """404: no such thing, or it is not yours (the API does not tell the two apart)."""


class ConflictError(ApiError):
    """409: the operation does not fit the current state (ended job, busy cluster, …)."""


class PayloadTooLargeError(ApiError):
    """413: a script or body over the API's limits."""


class InvalidRequestError(ApiError):
    """400/422: the body or a parameter is invalid; ``fields`` says which."""


class TooManyRequestsError(ApiError):
    """429: a backlog limit; ``retry_after`` says when to come back."""


class ServerError(ApiError):
    """5xx: the API could not do it now (usually transient; ``retry_after`` when set)."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequestError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: InvalidRequestError,
    429: TooManyRequestsError,
}


def api_error(status: int, body: dict[str, Any], headers: dict[str, str]) -> ApiError:
    """The most specific :class:`ApiError` subclass for an answer's status."""
    kind = _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    return kind(status, body, headers)


def is_retryable(exc: BaseException) -> bool:
    """Whether sending the same call again (with the same Idempotency-Key) may succeed.

    Throttling (429), server errors (5xx), a duplicate still being accepted (409
    ``IDEMPOTENCY_IN_PROGRESS``) and dropped connections are; everything else is an answer.
    """
    if isinstance(exc, ConnectionFailedError):
        return True
    if isinstance(exc, TooManyRequestsError | ServerError):
        return True
    return isinstance(exc, ConflictError) and exc.code == "IDEMPOTENCY_IN_PROGRESS"
