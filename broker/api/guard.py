"""Refuse a malformed request body before the resolver sees it, with the one error schema.

Powertools' resolver turns some malformed bodies into exceptions it does not map (a body that
is not UTF-8 raises ``UnicodeDecodeError`` while it decodes it; a deeply nested one raises
``RecursionError``; a media type it cannot parse raises ``RequestUnsupportedContentType``). Those
would answer 500, so every body is checked here first, in this order:

1. size: over MAX_BODY_BYTES (MAX_BATCH_BODY_BYTES for a batch) -> 413 ``PAYLOAD_TOO_LARGE``;
2. media type: a body must be ``application/json`` (UTF-8; no ``Content-Type`` is read as JSON)
   -> else 415 ``UNSUPPORTED_MEDIA_TYPE``;
3. encoding: UTF-8 -> else 400 ``INVALID_JSON``;
4. syntax and nesting: JSON, at most MAX_JSON_DEPTH arrays/objects deep -> else 400
   ``INVALID_JSON``.

A refusal is the client's mistake: it is logged at INFO, never at ERROR.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools.event_handler import Response

from broker.api.errors import error_response
from broker.batches.models import MAX_BATCH_BODY_BYTES
from broker.observability import logger
from broker.schema import MAX_BODY_BYTES, MAX_JSON_DEPTH

#: The one media type of every request body (parameters other than charset=utf-8 are refused).
JSON_MEDIA_TYPE = "application/json"
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")


class _RefusedError(Exception):
    def __init__(self, status: HTTPStatus, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def refusal(event: dict[str, Any]) -> tuple[Response[Any] | None, dict[str, Any]]:
    """The 4xx answer for a malformed body, else ``None`` and the event with a text body.

    A base64-encoded body (API Gateway sends one when it is not text) comes back decoded, so the
    resolver never decodes it again.
    """
    if not event.get("body"):
        return None, event
    try:
        body = _checked_body(event)
    except _RefusedError as refused:
        logger.info(
            "request refused",
            extra={"status": int(refused.status), "code": refused.code, "reason": refused.message},
        )
        return error_response(refused.status, refused.code, refused.message), event
    return None, {**event, "body": body, "isBase64Encoded": False}


def _checked_body(event: dict[str, Any]) -> str:
    """The body as text, once size, media type, encoding and syntax are checked.

    Raises:
        _RefusedError: the first check that fails.
    """
    raw: str = event["body"]
    body: str | bytes = raw
    if event.get("isBase64Encoded"):
        try:
            body = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _RefusedError(HTTPStatus.BAD_REQUEST, "INVALID_JSON", "not base64") from exc
    path = str(event.get("path") or "")
    bulk = path.endswith(("/jobs:batch", "/jobs:sweep"))
    limit = MAX_BATCH_BODY_BYTES if bulk else MAX_BODY_BYTES
    size = len(body.encode("utf-8")) if isinstance(body, str) else len(body)
    if size > limit:
        raise _RefusedError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            f"the body is {size} bytes; the limit is {limit} bytes",
        )
    media_problem = _media_type_problem(_header(event, "content-type"))
    if media_problem is not None:
        raise _RefusedError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE", media_problem
        )
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _RefusedError(
                HTTPStatus.BAD_REQUEST, "INVALID_JSON", "the body is not UTF-8"
            ) from exc
    problem = _json_problem(body)
    if problem is not None:
        raise _RefusedError(HTTPStatus.BAD_REQUEST, "INVALID_JSON", problem)
    return body


def _header(event: dict[str, Any], name: str) -> str | None:
    for key, value in (event.get("headers") or {}).items():
        if key.lower() == name:
            return str(value)
    return None


def _media_type_problem(content_type: str | None) -> str | None:
    if content_type is None or not content_type.strip():
        return None  # read as JSON, as Powertools does
    media_type, *params = (part.strip() for part in content_type.split(";"))
    if media_type.lower() != JSON_MEDIA_TYPE:
        return f"the body must be {JSON_MEDIA_TYPE}, not {media_type[:100]!r}"
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() != "charset" or value.strip().strip('"').lower() != "utf-8":
            return f"{JSON_MEDIA_TYPE} takes only charset=utf-8, not {param[:100]!r}"
    return None


def _json_problem(body: str) -> str | None:
    """Why ``body`` is not a JSON document this API reads, or ``None``."""
    if _depth(body) > MAX_JSON_DEPTH:
        return f"the body nests arrays/objects deeper than {MAX_JSON_DEPTH} levels"
    try:
        json.loads(body)
    except RecursionError:  # the depth check comes first; kept in case it is ever fooled
        return f"the body nests arrays/objects deeper than {MAX_JSON_DEPTH} levels"
    except ValueError as exc:
        return f"the body is not valid JSON: {str(exc)[:200]}"
    return None


def _depth(body: str) -> int:
    """How deep arrays and objects nest in ``body`` (brackets inside strings do not count).

    Cheap on ordinary bodies: only the bracket characters are walked.
    """
    if body.count("[") + body.count("{") <= MAX_JSON_DEPTH:
        return 0
    deepest = depth = 0
    for char in _NOT_BRACKETS.sub("", _STRING.sub("", body)):
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest
