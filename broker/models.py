"""The one schema: API bodies, queue messages and request records, as pydantic models.

Inbound models forbid unknown fields; closed sets are enums or literals; every public field
has a description, so the OpenAPI document (generated from these models) is the reference.
Storage items live in the DynamoDB adapter and convert to and from these models explicitly.
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
    TypeAdapter,
    field_validator,
)

from broker.clusters import (
    ClusterFailure,
    ClusterOperation,
    ClusterRecord,
    ClusterStatus,
    ComputeFleetStatus,
    ValidationMessage,
)
from broker.requests.states import RequestState

#: Largest job script accepted, in UTF-8 bytes. Larger scripts answer 413. The limit keeps a
#: request record well under DynamoDB's 400 KB item limit and a queue message under SQS's.
MAX_SCRIPT_BYTES = 64 * 1024


def _a_json_number(value: Any) -> Any:
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
JobName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
SlurmWord = Annotated[str, StringConstraints(pattern=_SLURM_WORD)]
#: Slurm time limits: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, or UNLIMITED.
TimeLimit = Annotated[
    str,
    StringConstraints(
        pattern=r"^(UNLIMITED|\d{1,7}|\d{1,7}:\d{1,2}|\d{1,7}:\d{1,2}:\d{1,2}"
        r"|\d{1,4}-\d{1,2}(:\d{1,2}){0,2})$"
    ),
]
#: Memory per node: a number with an optional K/M/G/T suffix (Slurm's --mem).
Memory = Annotated[str, StringConstraints(pattern=r"^[1-9]\d{0,8}[KMGT]?$")]
#: One path component that is not '..' (no '/', NUL or newline): 3+ characters, 2 that are not
#: both dots, or at most one.
_COMPONENT = r"(?:[^/\x00\n\r]{3,}|[^./\x00\n\r][^/\x00\n\r]|\.[^./\x00\n\r]|[^/\x00\n\r]?)"
#: An absolute path of at most 1024 characters, without NUL, newlines or '..' components.
AbsPath = Annotated[
    str,
    StringConstraints(pattern=rf"^/(?:{_COMPONENT}/)*{_COMPONENT}$", max_length=1024),
]


#: Slurm array expression: indexes, ranges with optional step, comma-separated, optional %limit.
ArraySpec = Annotated[
    str,
    StringConstraints(
        pattern=r"^[0-9]{1,7}(-[0-9]{1,7}(:[0-9]{1,7})?)?(,[0-9]{1,7}(-[0-9]{1,7}(:[0-9]{1,7})?)?)*"
        r"(%[0-9]{1,5})?$",
        max_length=256,
    ),
]
#: A job another job depends on: a broker job id, or a Slurm job id (optionally an array task).
JobRef = Annotated[str, StringConstraints(pattern=r"^(r[0-9a-f]{28}|[0-9]{1,10}(_[0-9]{1,7})?)$")]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
#: An environment variable's value: at most 4096 characters, no NUL.
EnvValue = Annotated[str, StringConstraints(pattern=r"^[^\x00]*$", max_length=4096)]
TagKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:/=+@-]{1,128}$")]
TagValue = Annotated[str, StringConstraints(pattern=r"^[^\x00]{0,256}$")]
#: Environment names the broker will not let a caller set: Slurm's own, the loader's, and
#: those glibc reads (they become the environment of sbatch, a root process on the head node).
#: The head-node agent refuses the same (a unit test keeps the two lists equal).
RESERVED_ENV_PREFIXES = ("SLURM_", "SBATCH_", "LD_", "BASH_FUNC_")
RESERVED_ENV_NAMES = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "IFS", "ENV"}
    | {"GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH"}
    | {"MALLOC_TRACE", "NIS_PATH", "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS", "TZDIR"}
)


#: The reserved names as a JSON Schema (``propertyNames`` of ``environment``): what the
#: validator below refuses, so a client generated from the document never sends one.
_RESERVED_ENV_SCHEMA: dict[str, Any] = {
    "not": {
        "anyOf": [
            {"enum": sorted(RESERVED_ENV_NAMES)},
            {"pattern": "^(" + "|".join(RESERVED_ENV_PREFIXES) + ")"},
        ]
    }
}


def _closed_keys(extra: dict[str, Any] | None = None) -> Any:
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


class Dependency(StrictModel):
    """A dependency condition on other jobs (all conditions must hold, Slurm's ``,``)."""

    type: Literal["after", "afterok", "afterany", "afternotok"] = Field(
        description="afterok: start after they all COMPLETED; afternotok: after they all failed; "
        "afterany: after they all ended; after: after they all started."
    )
    jobs: list[JobRef] = Field(
        min_length=1,
        max_length=100,
        description="Broker job ids (the request id of their submission) or Slurm job ids.",
    )


class JobSpec(StrictModel):
    """A batch job to submit to Slurm: an inline script plus scheduler options.

    Each option is validated against a tight pattern here and again by the head-node agent,
    and passed to ``sbatch`` as its own argument; the script is passed as data on sbatch's
    standard input, never on a command line.
    """

    script: str = Field(
        description=(
            "The batch script, starting with a shebang line (e.g. '#!/bin/bash'). Any text "
            f"without NUL, at most {MAX_SCRIPT_BYTES} bytes UTF-8 (413 above)."
        ),
        min_length=3,
        pattern=r"^#![^\x00]*$",
        # The limit is in bytes (413, checked by the service); JSON Schema counts characters.
        json_schema_extra={"maxLength": MAX_SCRIPT_BYTES},
    )
    name: JobName | None = Field(default=None, description="Slurm job name (--job-name).")
    partition: SlurmWord | None = Field(default=None, description="Slurm partition (--partition).")
    account: SlurmWord | None = Field(default=None, description="Slurm account (--account).")
    qos: SlurmWord | None = Field(default=None, description="Slurm quality of service (--qos).")
    time_limit: TimeLimit | None = Field(
        default=None,
        description="Wall-clock limit (--time): minutes, or [D-]HH:MM:SS, or UNLIMITED.",
    )
    nodes: int | None = Field(
        default=None, strict=False, ge=1, le=10000, description="Node count (--nodes)."
    )
    ntasks: int | None = Field(
        default=None, strict=False, ge=1, le=1000000, description="Tasks (--ntasks)."
    )
    cpus_per_task: int | None = Field(
        default=None, strict=False, ge=1, le=1024, description="CPUs per task (--cpus-per-task)."
    )
    mem: Memory | None = Field(default=None, description="Memory per node (--mem), e.g. '4G'.")
    working_directory: AbsPath | None = Field(
        default=None, description="Absolute working directory on the cluster (--chdir)."
    )
    output: AbsPath | None = Field(
        default=None,
        description="stdout file pattern (--output), absolute; Slurm's %j %A %a %x %u allowed. "
        "Default: <working_directory>/slurm-%j.out (arrays: slurm-%A_%a.out).",
    )
    error: AbsPath | None = Field(
        default=None, description="stderr file pattern (--error); default: with stdout."
    )
    array: ArraySpec | None = Field(
        default=None, description="Job array (--array), e.g. '1-100%10' or '1,3,5-9:2'."
    )
    dependency: list[Dependency] | None = Field(
        default=None,
        max_length=20,
        description="Conditions on other jobs (--dependency); a dependency on a job that "
        "cannot run makes this one fail instead of pending forever.",
    )
    environment: dict[EnvName, EnvValue] | None = Field(
        default=None,
        max_length=128,
        description="Variables for the job (exported through sbatch's environment, never argv). "
        "Names starting SLURM_, SBATCH_, LD_ or BASH_FUNC_, and PATH, HOME, USER, SHELL and the "
        "others listed in the schema, are reserved.",
        json_schema_extra=_closed_keys(_RESERVED_ENV_SCHEMA),
    )
    hold: bool = Field(default=False, description="Submit held (--hold); release in Slurm.")
    tags: dict[TagKey, TagValue] | None = Field(
        default=None,
        max_length=50,
        description="Your labels, kept on the broker's job record.",
        json_schema_extra=_closed_keys(),
    )

    # These run before the schema's own pattern checks, only to word the common mistakes better.
    @field_validator("script", mode="before")
    @classmethod
    def _script_is_a_script(cls, value: Any) -> Any:
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("the script must not contain NUL characters")
        if isinstance(value, str) and not value.startswith("#!"):
            raise ValueError("the script must start with a shebang line, e.g. '#!/bin/bash'")
        return value

    _integers = field_validator("nodes", "ntasks", "cpus_per_task", mode="before")(_a_json_number)

    @field_validator("working_directory", "output", "error", mode="before")
    @classmethod
    def _no_parent_components(cls, value: Any) -> Any:
        if isinstance(value, str) and ".." in value.split("/"):
            raise ValueError("the path must not contain '..' components")
        return value

    @field_validator("environment")
    @classmethod
    def _environment_is_safe(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name in value or {}:
            if name in RESERVED_ENV_NAMES or name.startswith(RESERVED_ENV_PREFIXES):
                raise ValueError(f"the variable name {name!r} is reserved")
        return value


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


class JobResult(BaseModel):
    """What a successful job submission produced."""

    kind: Literal["job.submit"] = "job.submit"
    job_id: str = Field(description="Slurm job id on the cluster.")
    cluster: str = Field(description="Cluster the job was submitted to.")
    reused: bool = Field(
        default=False,
        description="True when a retried delivery found the job already in Slurm (no duplicate).",
    )


class CancelResult(BaseModel):
    """What a cancel request did."""

    kind: Literal["job.cancel"] = "job.cancel"
    job_id: str = Field(description="Broker job id.")
    slurm_job_id: str | None = Field(default=None, description="Slurm id, if it reached Slurm.")
    before_submission: bool = Field(
        default=False, description="True when cancelled while still queued (never in Slurm)."
    )


class OutputPart(BaseModel):
    """A piece of one output stream of a job."""

    stream: Literal["stdout", "stderr"]
    path: str | None = Field(default=None, description="File on the cluster.")
    size: int | None = Field(default=None, description="File size in bytes when read.")
    offset: int = Field(default=0, description="Byte offset of this piece in the file.")
    length: int = Field(default=0, description="Bytes in this piece.")
    eof: bool = Field(default=False, description="Whether the piece reaches the file's end.")
    data: str | None = Field(default=None, description="The text, when small enough inline.")
    url: str | None = Field(
        default=None, description="Presigned URL of the text, when too large to inline."
    )
    error: ErrorInfo | None = None


class OutputResult(BaseModel):
    """What an output request retrieved."""

    kind: Literal["job.output"] = "job.output"
    job_id: str = Field(description="Broker job id.")
    parts: list[OutputPart] = Field(default_factory=list)


class BatchResult(BaseModel):
    """What a batch submission produced, once every item reached an end."""

    kind: Literal["job.batch"] = "job.batch"
    cluster: str
    items: int = Field(description="Items accepted into the batch.")
    counts: dict[str, int] = Field(description="Items by outcome: SUBMITTED, FAILED, CANCELLED.")


ClusterKind = Literal[
    "cluster.create", "cluster.update", "cluster.delete", "cluster.fleet", "cluster.describe"
]


class ClusterResult(BaseModel):
    """What a cluster operation ended with."""

    kind: ClusterKind
    cluster: str = Field(description="Cluster name.")
    status: ClusterStatus | None = Field(
        default=None, description="The cluster's status at the end (none for a dry run)."
    )
    compute_fleet_status: ComputeFleetStatus | None = None
    dryrun: bool = Field(
        default=False, description="True: a dry run that would have succeeded; nothing changed."
    )
    message: str | None = None
    validation_messages: list[ValidationMessage] = Field(
        default_factory=list, description="Validator findings (warnings, info) on success."
    )
    change_set: list[dict[str, Any]] | None = Field(
        default=None, description="An update's changes (dry run of an update)."
    )


RequestResult = Annotated[
    JobResult | CancelResult | OutputResult | BatchResult | ClusterResult,
    Field(discriminator="kind"),
]
RequestKind = Literal["job.submit", "job.cancel", "job.output", "job.batch"] | ClusterKind


class RequestRecord(BaseModel):
    """A broker request: one accepted API write and everything known about its progress."""

    request_id: str = Field(description="Broker request id (also in the job's Slurm comment).")
    kind: RequestKind = Field(description="What the request does.")
    owner: str = Field(description="Authenticated principal (IAM ARN) that made the request.")
    cluster: str = Field(description="Target cluster name.")
    state: RequestState = Field(description="Current state.")
    attempts: int = Field(default=0, ge=0, description="How many times a worker took it.")
    created_at: datetime = Field(description="When the API accepted it (UTC).")
    updated_at: datetime = Field(description="Last state change (UTC).")
    result: RequestResult | None = Field(default=None, description="Set when SUCCEEDED.")
    error: ErrorInfo | None = Field(
        default=None, description="Set when FAILED; while retrying, the last transient error."
    )
    spec: JobSpec | None = Field(default=None, description="The submitted job specification.")
    job_id: str | None = Field(default=None, description="Broker id of the job concerned.")
    query: OutputQueryBody | None = Field(default=None, description="For job.output.")
    notify_pending: str | None = Field(default=None, description="State awaiting its event.")
    requeued_at: datetime | None = Field(
        default=None,
        description="When the sweep last sent the message again (it was still ACCEPTED; "
        "see broker.requeue).",
    )
    items: int | None = Field(default=None, description="job.batch: items accepted.")
    batch_size: int | None = Field(default=None, description="job.batch: items sent.")
    counts: dict[str, int] = Field(
        default_factory=dict, description="job.batch: items by outcome so far."
    )
    chunk_starts: list[int] | None = Field(
        default=None,
        description="job.batch: the first item index of each chunk (its items have no record "
        "until their outcome; see broker.batches).",
    )
    rejected_items: list[int] | None = Field(
        default=None, description="job.batch: indexes of the items rejected at accept."
    )


class RequestView(BaseModel):
    """The API's view of a request (``GET /v1/requests/{id}``)."""

    request_id: str
    kind: RequestKind
    cluster: str
    state: RequestState
    status: RequestState = Field(description="Alias of state, kept for clients that read 'status'.")
    attempts: int
    created_at: datetime
    updated_at: datetime
    job_id: str | None = Field(default=None, description="Broker id of the job concerned.")
    result: RequestResult | None = None
    error: ErrorInfo | None = None
    items: int | None = Field(default=None, description="job.batch: items accepted.")
    counts: dict[str, int] | None = Field(
        default=None,
        description="job.batch: items by outcome so far (SUBMITTED, FAILED, CANCELLED); the "
        "rest are still queued.",
    )
    item_page: list[BatchItemView] | None = Field(
        default=None, description="job.batch: a page of items (see items_from, items_limit)."
    )
    next_items_from: int | None = Field(
        default=None, description="job.batch: items_from of the next page, if any."
    )

    @classmethod
    def of(cls, record: RequestRecord) -> RequestView:
        """Build the public view of a record (the owner and spec stay private)."""
        return cls(
            request_id=record.request_id,
            kind=record.kind,
            cluster=record.cluster,
            state=record.state,
            status=record.state,
            attempts=record.attempts,
            created_at=record.created_at,
            updated_at=record.updated_at,
            job_id=record.job_id,
            result=record.result,
            error=record.error,
            items=record.items,
            counts=record.counts if record.kind == "job.batch" else None,
        )


class BatchItemView(BaseModel):
    """One item of a batch, as its job stands."""

    index: int
    job_id: str = Field(description="Broker job id of the item.")
    state: str = Field(description="The job's state (SUBMITTING until it reaches Slurm).")
    slurm_job_id: str | None = None
    reason: str | None = None


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

#: Most items a batch may hold, and the largest batch body (Lambda's synchronous payload is
#: 6 MB; the rest of the event needs room). Larger: 413.
MAX_BATCH_ITEMS = 10_000
MAX_BATCH_BODY_BYTES = 5 * 1024 * 1024


#: The OpenAPI document's name for a job specification (Powertools' components).
_JOB_SPEC_REF: dict[str, Any] = {"$ref": "#/components/schemas/JobSpec"}


class BatchBody(StrictModel):
    """A burst of jobs for one cluster (``POST /v1/clusters/{cluster}/jobs:batch``).

    Items are validated one by one (``jobs`` is a list of plain objects here), so the document
    states the rule itself: at least one item must be a valid JobSpec, and with ``atomic: true``
    every item must be.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"atomic": {"const": True}}, "required": ["atomic"]},
            "then": {"properties": {"jobs": {"items": _JOB_SPEC_REF}}},
            "else": {"properties": {"jobs": {"contains": _JOB_SPEC_REF}}},
        }
    )

    jobs: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=MAX_BATCH_ITEMS,
        description=f"1 to {MAX_BATCH_ITEMS} job specifications (each as in POST .../jobs); "
        f"the whole body at most {MAX_BATCH_BODY_BYTES} bytes. With atomic=false, invalid "
        "items are listed in the answer, but at least one must be valid (422 otherwise).",
    )
    atomic: bool = Field(
        default=False,
        description="true: any invalid item rejects the whole batch (422, nothing accepted); "
        "false: valid items are accepted and invalid ones listed in the answer.",
    )


class BatchItemError(BaseModel):
    """Why one item of a batch was rejected."""

    index: int
    fields: list[FieldError]


class BatchAccepted(BaseModel):
    """Answer to an accepted batch (HTTP 202)."""

    request_id: str = Field(description="The batch's request id; poll its location.")
    status: Literal["ACCEPTED"] = "ACCEPTED"
    location: str
    accepted: int = Field(description="Items accepted.")
    rejected_count: int = Field(description="Items rejected (not submitted).")
    rejected: list[BatchItemError] = Field(
        description="Rejected items with their errors (the first 1,000)."
    )
    job_id_prefix: str = Field(
        description="Item i's job id is job_id_prefix + i as 6 lowercase hex digits "
        "(e.g. item 10 -> prefix + '00000a'); rejected indexes have no job."
    )


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


#: Largest output offset a caller may ask for (a file offset must fit the head node's off_t;
#: 1 PiB is far beyond any job's output).
MAX_OUTPUT_OFFSET = 2**50


class OutputQueryBody(StrictModel):
    """Which output to fetch (``POST /v1/clusters/{cluster}/jobs/{job_id}/output``)."""

    _integers = field_validator("offset", "max_bytes", "task", mode="before")(_a_json_number)

    stream: Literal["stdout", "stderr", "both"] = Field(
        default="both", description="Which stream(s)."
    )
    offset: int | None = Field(
        default=None,
        strict=False,
        ge=0,
        le=MAX_OUTPUT_OFFSET,
        description=f"Byte offset to read from, at most {MAX_OUTPUT_OFFSET} (1 PiB); omitted: "
        "the tail.",
    )
    max_bytes: int = Field(
        default=64 * 1024,
        strict=False,
        ge=1,
        le=64 * 1024,
        description="Bytes per stream, at most 64 KiB.",
    )
    task: int | None = Field(
        default=None, strict=False, ge=0, le=9_999_999, description="Array task index, for arrays."
    )


class JobSubmitMessage(BaseModel):
    """Queue message: one job submission for the job worker."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    kind: Literal["job.submit"] = "job.submit"
    request_id: str
    owner: str
    cluster: str
    spec: JobSpec


class JobCancelMessage(BaseModel):
    """Queue message: cancel a job in Slurm."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    kind: Literal["job.cancel"] = "job.cancel"
    request_id: str
    owner: str
    cluster: str
    job_id: str


class JobOutputMessage(BaseModel):
    """Queue message: fetch a job's output."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    kind: Literal["job.output"] = "job.output"
    request_id: str
    owner: str
    cluster: str
    job_id: str
    query: OutputQueryBody


class BatchItem(BaseModel):
    """One job of a batch message."""

    model_config = ConfigDict(extra="forbid")

    index: int
    job_id: str
    spec: JobSpec


class JobBatchMessage(BaseModel):
    """Queue message: a chunk of a batch (up to CHUNK_ITEMS jobs, one agent call)."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    kind: Literal["job.batch"] = "job.batch"
    request_id: str
    owner: str
    cluster: str
    items: list[BatchItem]
    chunk: int | None = Field(default=None, ge=0, description="The chunk's number in its batch.")


AnyMessage = JobSubmitMessage | JobCancelMessage | JobOutputMessage | JobBatchMessage
QueueMessage = Annotated[AnyMessage, Field(discriminator="kind")]
QUEUE_MESSAGE: TypeAdapter[AnyMessage] = TypeAdapter(QueueMessage)


#: Largest cluster configuration accepted, in UTF-8 bytes (it travels in one SQS message).
MAX_CLUSTER_CONFIG_BYTES = 128 * 1024
Region = Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]$")]
#: pcluster's --suppress-validators values: ALL, or type:<ValidatorName>.
SuppressValidator = Annotated[
    str, StringConstraints(pattern=r"^(ALL|type:[A-Za-z0-9]{1,128}|id:[A-Za-z0-9_.-]{1,128})$")
]
FailureLevel = Literal["INFO", "WARNING", "ERROR"]


def _configuration_field() -> Any:
    return Field(
        min_length=1,
        max_length=MAX_CLUSTER_CONFIG_BYTES,
        pattern=r"^[^\x00]*$",
        description="The ParallelCluster 3 configuration, as YAML text without NUL "
        f"(at most {MAX_CLUSTER_CONFIG_BYTES} bytes).",
    )


class ClusterCreateBody(StrictModel):
    """Create a cluster (``POST /v1/clusters``)."""

    name: ClusterName = Field(
        description="Cluster name: a letter, then letters, digits and hyphens, at most 60 "
        "(ParallelCluster's rule; 40 with Slurm accounting, checked by its validators)."
    )
    configuration: str = _configuration_field()
    region: Region | None = Field(default=None, description="AWS region (default: the broker's).")
    dryrun: bool = Field(
        default=False, description="Validate only; the request ends SUCCEEDED with dryrun: true."
    )
    rollback_on_failure: bool = Field(
        default=True, description="Roll the stack back if creation fails."
    )
    suppress_validators: list[SuppressValidator] | None = Field(
        default=None, max_length=50, description="Validators to skip: 'ALL' or 'type:<Name>'."
    )
    validation_failure_level: FailureLevel | None = Field(
        default=None, description="Lowest finding level that fails the request (pcluster: ERROR)."
    )

    @field_validator("configuration")
    @classmethod
    def _configuration_size(cls, value: str) -> str:
        return _check_configuration(value)


class ClusterUpdateBody(StrictModel):
    """Update a cluster (``PUT /v1/clusters/{name}``)."""

    configuration: str = _configuration_field()
    region: Region | None = Field(default=None, description="AWS region (default: the broker's).")
    dryrun: bool = Field(default=False, description="Validate and list the changes only.")
    force_update: bool = Field(
        default=False, description="Apply even if some update validators object (pcluster's)."
    )
    suppress_validators: list[SuppressValidator] | None = Field(
        default=None, max_length=50, description="Validators to skip: 'ALL' or 'type:<Name>'."
    )
    validation_failure_level: FailureLevel | None = Field(
        default=None, description="Lowest finding level that fails the request."
    )

    @field_validator("configuration")
    @classmethod
    def _configuration_size(cls, value: str) -> str:
        return _check_configuration(value)


def _check_configuration(value: str) -> str:
    if len(value.encode("utf-8")) > MAX_CLUSTER_CONFIG_BYTES:
        raise ValueError(f"the configuration is over {MAX_CLUSTER_CONFIG_BYTES} bytes")
    return value


class FleetBody(StrictModel):
    """Start or stop a cluster's compute fleet (``POST /v1/clusters/{name}/fleet``)."""

    status: Literal["START_REQUESTED", "STOP_REQUESTED"] = Field(
        description="START_REQUESTED: start the compute fleet; STOP_REQUESTED: stop it."
    )


class ClusterMessage(BaseModel):
    """Queue message: one cluster operation for the cluster worker."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    kind: ClusterKind
    request_id: str
    owner: str
    cluster: str
    region: str | None = None
    configuration: str | None = None
    dryrun: bool = False
    rollback_on_failure: bool = True
    force_update: bool = False
    suppress_validators: list[str] | None = None
    validation_failure_level: FailureLevel | None = None
    fleet_status: Literal["START_REQUESTED", "STOP_REQUESTED"] | None = None

    @property
    def operation(self) -> ClusterOperation:
        """The cluster operation (``create`` for ``cluster.create``, ...)."""
        operation: ClusterOperation = self.kind.split(".", 1)[1]  # type: ignore[assignment]
        return operation


class LastOperation(BaseModel):
    """The last operation started on a cluster through the broker."""

    operation: ClusterOperation
    request_id: str
    location: str = Field(description="GET it for the operation's outcome.")
    pending: bool = Field(description="Whether it is still in progress.")


class ClusterView(BaseModel):
    """A cluster as the broker knows it (``GET /v1/clusters/{name}``), from its record."""

    name: str
    status: ClusterStatus = Field(description="ParallelCluster's clusterStatus.")
    region: str | None = None
    version: str | None = Field(default=None, description="ParallelCluster version.")
    scheduler: str | None = None
    head_node_instance_id: str | None = None
    compute_fleet_status: ComputeFleetStatus | None = None
    provider: str | None = Field(
        default=None, description="'pcluster', or 'local-simulation' on the local stack."
    )
    last_operation: LastOperation
    failures: list[ClusterFailure] = Field(default_factory=list)
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, record: ClusterRecord) -> ClusterView:
        """The public view of a record (the owner stays private)."""
        return cls(
            name=record.name,
            status=record.status,
            region=record.region,
            version=record.version,
            scheduler=record.scheduler,
            head_node_instance_id=record.head_node_instance_id,
            compute_fleet_status=record.compute_fleet_status,
            provider=record.provider,
            last_operation=LastOperation(
                operation=record.operation,
                request_id=record.operation_request_id,
                location=f"/v1/requests/{record.operation_request_id}",
                pending=record.pending_request_id is not None,
            ),
            failures=record.failures,
            created_at=record.created_at,
            updated_at=record.updated_at,
        )


class ClusterList(BaseModel):
    """A page of your clusters."""

    clusters: list[ClusterView]
    next_token: str | None = Field(default=None, description="Pass it to get the next page.")


def batch_ids(count: int) -> tuple[str, str, list[str]]:
    """A new batch's request id, its job id prefix, and the job id of each of ``count`` items.

    Ids keep the request id shape (``r`` + 28 hex): 12 hex of time, 10 random, then 6 for the
    item's index; the batch itself takes index ffffff (a batch has at most 10,000 items).
    """
    prefix = new_request_id()[:23]
    return prefix + "ffffff", prefix, [f"{prefix}{i:06x}" for i in range(count)]


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


def slurm_token(request_id: str) -> str:
    """The deterministic token a job carries in its Slurm comment for de-duplication."""
    return f"hpcb:{request_id}"


def dump(model: BaseModel) -> dict[str, Any]:
    """JSON-compatible dict of a model (datetimes as ISO strings)."""
    return model.model_dump(mode="json", exclude_none=True)
