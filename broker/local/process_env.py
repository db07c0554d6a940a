"""The process environment of the local stack: set it for the handlers, then put it back.

This module owns ``os.environ`` while a stack runs. Every handler runs in this one process, so
the environments of the template's functions are merged into one (:func:`union_environment`;
two functions that disagree on a key are an error unless an override settles it), and boto3 is
pointed at moto with fake credentials, after removing anything that could send it elsewhere or
sign with someone's real session (:meth:`ProcessEnvironment.point_at_moto`).
:class:`ProcessEnvironment` remembers the value each key had before its first change, so
:meth:`ProcessEnvironment.restore` leaves the process as it found it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Final

from broker.local.template import FunctionDef, LocalStackError

__all__ = ["ProcessEnvironment", "union_environment"]

_FAKE_CREDENTIALS: Final = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# Anything that could send boto3 somewhere else, or sign with someone's real session.
_UNSET_AWS_ENV: Final = (
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
)


def union_environment(
    functions: Iterable[FunctionDef], overrides: Mapping[str, str]
) -> dict[str, str]:
    """The one environment every function can run with: theirs merged, then ``overrides``.

    Raises:
        LocalStackError: two functions give a key different values and no override sets it.
    """
    union: dict[str, str] = {}
    owner: dict[str, str] = {}
    for function in functions:
        for key, value in function.environment.items():
            if key in overrides:
                continue
            if key in union and union[key] != value:
                raise LocalStackError(
                    f"environment conflict: {key} is {union[key]!r} in {owner[key]} but "
                    f"{value!r} in {function.logical_id}; every handler shares this "
                    "process, so give them one value (or override it)"
                )
            union[key] = value
            owner[key] = function.logical_id
    return {**union, **overrides}


class ProcessEnvironment:
    """Changes to ``os.environ`` that can be undone: the first value of each key is kept."""

    def __init__(self) -> None:
        self._saved: dict[str, str | None] = {}

    def point_at_moto(self, moto_url: str, region: str) -> None:
        """Send boto3 to ``moto_url`` in ``region`` with fake credentials."""
        values = {
            "AWS_ENDPOINT_URL": moto_url,
            "AWS_DEFAULT_REGION": region,
            "AWS_REGION": region,
            "AWS_EC2_METADATA_DISABLED": "true",
            **_FAKE_CREDENTIALS,
        }
        # A service-specific endpoint (AWS_ENDPOINT_URL_SQS …) would beat AWS_ENDPOINT_URL.
        unset = [
            *_UNSET_AWS_ENV,
            *(k for k in os.environ if k.startswith("AWS_ENDPOINT_URL_")),
        ]
        for key in unset:
            self._save(key)
            os.environ.pop(key, None)
        self.set(values)

    def set(self, values: Mapping[str, str]) -> None:
        """Set each of ``values`` in ``os.environ``."""
        for key, value in values.items():
            self._save(key)
            os.environ[key] = value

    def restore(self) -> None:
        """Put back every key changed since the last restore (unset the ones that were unset)."""
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved.clear()

    def _save(self, key: str) -> None:
        if key not in self._saved:
            self._saved[key] = os.environ.get(key)
