"""The local API refuses web pages: it has no authentication (the caller is a header), so a
page the developer happens to open must not be able to drive it (issue 12, "Local mode")."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Final

#: The names the local API answers to: a page on another site that resolves its own name to
#: 127.0.0.1 (DNS rebinding) sends its own name as Host, and is refused.
LOOPBACK_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})


def _host_name(host: str) -> str:
    """``host[:port]`` or ``[v6]:port`` -> the name, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def browser_refusal(
    environ: Mapping[str, Any], allowed_hosts: frozenset[str] | None
) -> tuple[int, str, str, str] | None:
    """Why a request (its WSGI environ) must not reach the local API's handlers: (status,
    message, request id, code) of the refusal; None if it may.

    The local API has no authentication (the caller is a header), so a web page the developer
    opens must not drive it: a browser sends ``Origin`` with every cross-origin POST, even a
    no-cors one with a body of no type (no preflight), and DNS rebinding shows as a foreign
    ``Host``. curl, the CLI and the client send neither, and are unaffected.
    """
    if allowed_hosts is None:
        return None
    request_id = str(uuid.uuid4())
    if _host_name(str(environ.get("HTTP_HOST", ""))) not in allowed_hosts:
        message = "the local API answers to localhost / 127.0.0.1 only"
        return 421, message, request_id, "MISDIRECTED_REQUEST"
    origin = environ.get("HTTP_ORIGIN")
    if origin is not None:
        name = str(origin).split("://", 1)[-1].split("/", 1)[0]
        if origin == "null" or _host_name(name) not in allowed_hosts:
            message = "the local API refuses calls from web pages"
            return 403, message, request_id, "CROSS_ORIGIN_REFUSED"
    return None
