"""Opaque, tamper-evident ``next_token`` values for the listing routes.

A page token is the store's own page key (already opaque text) followed by an HMAC-SHA256 tag
over the caller, the listing it was issued for (route and filters, not the page size), and
that key. A token that was altered, made up, issued to another caller or for another query
fails the check before anything reaches the store, so a caller can never steer a query's
start key (another owner's partition, or a key DynamoDB refuses with a 500), and learns
nothing from the answer but ``INVALID_NEXT_TOKEN``.

The HMAC key comes from a Secrets Manager secret that the stack generates (``PageTokenSecret``
in template.yaml), read once per cold start with Powertools' parameters utility.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from functools import cache
from typing import Any

from broker.errors import InvalidNextTokenError, TransientError
from broker.observability import logger
from broker.settings import PageTokenSettings, page_token_settings

#: Version of the tag's input layout; a change of layout makes old tokens invalid, not misread.
_VERSION = b"hpcb-page-token-v1"
_TAG_BYTES = 32
_INVALID = "next_token is not valid for this listing; start again without it"


class PageTokens:
    """Seals store page keys into ``next_token`` values and opens them again.

    Args:
        key: the HMAC key (at least 32 bytes).
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < _TAG_BYTES:
            raise ValueError("a page-token key needs at least 32 bytes")
        self._key = key

    def seal(self, page: str | None, *, caller: str, query: Mapping[str, Any]) -> str | None:
        """The ``next_token`` for the store's page key ``page`` (None on the last page)."""
        if page is None:
            return None
        tag = base64.urlsafe_b64encode(self._tag(page, caller, query)).decode().rstrip("=")
        return f"{page}.{tag}"

    def open(self, token: str | None, *, caller: str, query: Mapping[str, Any]) -> str | None:
        """The store's page key in ``token`` (None when no token was sent).

        Raises:
            InvalidNextTokenError: malformed, altered, another caller's or another query's.
        """
        if token is None:
            return None
        page, _, tag_text = token.rpartition(".")
        try:
            tag = base64.urlsafe_b64decode(tag_text + "=" * (-len(tag_text) % 4))
        except (binascii.Error, ValueError):
            raise InvalidNextTokenError(_INVALID) from None
        if not page or not hmac.compare_digest(tag, self._tag(page, caller, query)):
            raise InvalidNextTokenError(_INVALID)
        return page

    def _tag(self, page: str, caller: str, query: Mapping[str, Any]) -> bytes:
        # Length-prefixed parts: no two (caller, query, page) triples give the same input.
        parts = [caller, json.dumps(query, sort_keys=True, default=str), page]
        data = _VERSION + b"".join(
            len(raw).to_bytes(4, "big") + raw for raw in (part.encode() for part in parts)
        )
        return hmac.new(self._key, data, hashlib.sha256).digest()


def page_tokens() -> PageTokens:
    """The API's page tokens, keyed once per cold start (see ``PageTokenSettings``).

    Raises:
        TransientError: the secret could not be read (answer 503; the next call tries again).
    """
    return _keyed(page_token_settings())


@cache
def _keyed(settings: PageTokenSettings) -> PageTokens:
    # Cached per settings: new settings (tests, a restarted local stack) read the key again.
    if settings.page_token_secret:
        return PageTokens(_secret_key(settings.page_token_secret))
    if settings.page_token_key is not None:
        return PageTokens(settings.page_token_key.get_secret_value().encode())
    logger.warning("no page-token key configured: a random key, valid in this process only")
    return PageTokens(secrets.token_bytes(_TAG_BYTES))


def _secret_key(name: str) -> bytes:
    # Imported here: only the API function reads the secret, and only on its first listing.
    from aws_lambda_powertools.utilities import parameters  # noqa: PLC0415

    from broker.adapters.aws import client  # noqa: PLC0415

    # Our cached client, not Powertools' default provider: that one keeps the first client the
    # process built, so a process whose endpoint changed (the local stack after the tests' moto)
    # would ask the old endpoint for ever.
    provider = parameters.SecretsProvider(boto3_client=client("secretsmanager"))
    try:
        value = provider.get(name, max_age=0)
    except parameters.exceptions.GetParameterError as exc:
        logger.warning("page-token secret unavailable", extra={"error": str(exc)})
        raise TransientError("listing is unavailable right now; try again later") from exc
    key = value if isinstance(value, bytes) else str(value).encode()
    if len(key) < _TAG_BYTES:
        raise ValueError("the page-token secret is shorter than 32 bytes")
    return key
