"""The schema kit every capability shares: the strict base of inbound models, the common field
types and rules, the one error body, ids and times.

Each capability keeps its own bodies, messages and views beside its code (``broker.jobs.models``,
``broker.batches.models``, ``broker.clusters.models``, ``broker.requests.models``); together they
are the one schema. Inbound models forbid unknown fields; closed sets are enums or literals; every
public field has a description, so the OpenAPI document (generated from these models) is the
reference. Storage items live in the DynamoDB adapter and convert to and from these models
explicitly.
"""

from __future__ import annotations

import os
import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

from broker.clusters import ValidationMessage


def a_json_number(value: Any) -> Any:
    """Before an integer field (``strict=False``, so that 3.0 is 3, as JSON Schema reads it):
    ``"3"`` and ``true`` are not integers."""
    if isinstance(value, (str, bool)):
        raise ValueError("an integer is required")
    return value


_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _a_date_time(value: Any) -> Any:
    if isinstance(value, str) and not _DATE_TIME.match(value):
        raise ValueError("an ISO 8601 date-time is required, e.g. 2026-01-31T12:00:00Z")
    return value


#: A date and time, ISO 8601 (RFC 3339 in the document), never a bare number of seconds.
DateTimeText = Annotated[datetime, BeforeValidator(_a_date_time)]


#: Cluster names follow ParallelCluster's rule: a letter, then letters, digits, hyphens (<= 60).
ClusterName = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9-]{0,59}$", max_length=60)
]


_SLURM_WORD = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


SlurmWord = Annotated[str, StringConstraints(pattern=_SLURM_WORD)]


#: A POSIX user name as the head-node agent accepts it (useradd's portable shape, at most 32
#: characters): the user a job, its cancel and its output reads run as.
POSIX_USER = r"^[a-z_][a-z0-9_-]{0,31}$"


#: One path component that is not '..' (no '/', NUL or newline): 3+ characters, 2 that are not
#: both dots, or at most one.
_COMPONENT = r"(?:[^/\x00\n\r]{3,}|[^./\x00\n\r][^/\x00\n\r]|\.[^./\x00\n\r]|[^/\x00\n\r]?)"


#: An absolute path of at most 1024 characters, without NUL, newlines or '..' components.
AbsPath = Annotated[
    str,
    StringConstraints(pattern=rf"^/(?:{_COMPONENT}/)*{_COMPONENT}$", max_length=1024),
]


def closed_keys(extra: dict[str, Any] | None = None) -> Any:
    """A ``json_schema_extra`` for a ``dict[Pattern, Value]`` field: keys that do not match the
    pattern are refused, so say so.

    Pydantic writes such a dict as ``patternProperties``, which lets any other key through with
    any value; the validator refuses them. ``propertyNames`` + ``additionalProperties`` state
    the rule as it is (``extra`` is added to ``propertyNames``).
    """

    def close(schema: dict[str, Any]) -> None:
        for option in schema.get("anyOf", [schema]):
            patterns = option.pop("patternProperties", None)
            if patterns:
                ((pattern, value),) = patterns.items()
                option["propertyNames"] = {"pattern": pattern, **(extra or {})}
                option["additionalProperties"] = value

    return close


class StrictModel(BaseModel):
    """Base of inbound models: unknown fields are errors, and nothing is coerced (``0`` is not
    ``false``, ``"5"`` is not ``5``): what the document's types say is what is accepted."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False, strict=True)


class ErrorInfo(BaseModel):
    """Why a request failed."""

    code: str = Field(description="Stable machine-readable error code, e.g. SCHEDULER_REJECTED.")
    message: str = Field(description="What happened, in words a person can act on.")
    transient: bool = Field(description="Whether the same request may succeed if sent again.")
    validation_messages: list[ValidationMessage] | None = Field(
        default=None,
        description="A cluster configuration's validator findings (level, type, message), "
        "when ParallelCluster rejected it.",
    )


class AcceptedResponse(BaseModel):
    """Answer to an accepted write (HTTP 202)."""

    request_id: str = Field(description="Poll GET /v1/requests/{request_id} for progress.")
    status: Literal["ACCEPTED"] = Field(default="ACCEPTED", description="Always ACCEPTED.")
    location: str = Field(description="Path of the request resource (also the Location header).")


#: What a ``next_token`` may look like (an opaque token the API issued: URL-safe base64 with
#: dots; its content is checked when used, 422 if it is not one of ours).
NEXT_TOKEN_PATTERN = r"^[A-Za-z0-9_.=-]{1,2048}$"  # noqa: S105 - a pattern, not a secret


#: Largest request body accepted, in bytes (the script limit is lower; see MAX_SCRIPT_BYTES).
MAX_BODY_BYTES = 1024 * 1024


#: How deep arrays and objects may nest in a request body (a job spec needs 4, a batch 6).
MAX_JSON_DEPTH = 32


class FieldError(BaseModel):
    """One bad field of a rejected body."""

    field: str = Field(description="Dotted path of the field, e.g. 'body.nodes'.")
    message: str = Field(description="What is wrong with it.")
    type: str = Field(
        description="Machine-readable kind of problem, e.g. 'string_pattern_mismatch'."
    )


class ErrorDetail(BaseModel):
    """The error object of every 4xx/5xx answer."""

    code: str = Field(description="Stable machine-readable error code.")
    message: str = Field(description="What went wrong, for a person.")
    transient: bool = Field(default=False, description="Whether retrying the same call may help.")
    fields: list[FieldError] = Field(default_factory=list, description="Each bad field, if any.")
    cluster_status: str | None = Field(
        default=None,
        description="CLUSTER_NOT_READY: the cluster's status (e.g. CREATE_IN_PROGRESS).",
    )


class ErrorResponse(BaseModel):
    """Body of every error answer."""

    error: ErrorDetail


def utcnow() -> datetime:
    """Current time, timezone-aware UTC, millisecond precision (what DynamoDB stores)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=(now.microsecond // 1000) * 1000)


def new_request_id() -> str:
    """A time-ordered, unguessable request id: ``r`` + 12 hex ms timestamp + 16 hex random.

    Time-ordered so that listings sort by creation; random so that ids cannot be enumerated.
    Only ``[a-z0-9]``: safe in URLs, Slurm comments and DynamoDB keys.
    """
    return f"r{int(time.time() * 1000):012x}{os.urandom(8).hex()}"


def dump(model: BaseModel) -> dict[str, Any]:
    """JSON-compatible dict of a model (datetimes as ISO strings)."""
    return model.model_dump(mode="json", exclude_none=True)
