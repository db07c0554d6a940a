"""Worker side of the head-node agent protocol.

The worker sends the agent ONE payload: compact JSON of an ``AgentRequest``, base64-encoded
(alphabet ``[A-Za-z0-9+/=]`` only, so it can stand on a command line without quoting risk).
The agent answers with ONE JSON document (an ``AgentResponse``) on stdout.

Large payloads: when the encoded request is larger than a runner can carry inline, the runner
stages the JSON in S3 and sends the agent a small ``fetch`` request whose ``payload_url`` is a
presigned GET URL. Large answers: when the request carries ``result_put_url`` and the answer is
larger than ``inline_limit`` characters, the agent PUTs the answer there and prints
``{"v":1,"ok":true,"op":...,"staged":true}``; the runner then reads the staged answer.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from broker.errors import TransientError
from broker.jobs.models import JobSpec
from broker.schema import POSIX_USER

PROTOCOL_VERSION = 1
_B64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")

AgentOp = Literal["ping", "submit", "fetch", "status", "cancel", "output"]

#: A Slurm job id as the agent accepts it: a base id, or an array task ``<base>_<index>``.
SLURM_JOB_ID = r"^[0-9]{1,10}(_[0-9]{1,7})?$"
#: Largest output chunk per stream and call (the API's limit as well).
MAX_OUTPUT_BYTES = 64 * 1024
#: Largest ``inline_limit`` the agent takes: far above any runner's stdout limit.
MAX_INLINE_LIMIT = 16 * 1024 * 1024
#: The de-duplication token a job carries in its Slurm comment.
DEDUP_PATTERN = r"^hpcb:[a-z0-9]{1,64}$"
#: The lowest uid the agent acts as unless the request says otherwise (uid 0: never).
DEFAULT_MIN_UID = 1000


class AgentErrorInfo(BaseModel):
    """An error the agent reports, for one job or for the whole call."""

    code: str
    message: str
    transient: bool = False


class AgentJob(BaseModel):
    """One job for the agent to submit, identified by its de-duplication token.

    ``options`` are sbatch options by JobSpec field name (each becomes one ``--opt=value``
    argument; ``hold: 1`` becomes ``--hold``; ``dependency`` is already in Slurm's form, e.g.
    ``afterok:123:124,afterany:125``, with broker job ids resolved by the worker).
    ``environment`` is exported to the job through sbatch's process environment, never argv.
    ``user`` is the POSIX user the job runs as: the agent runs sbatch as that user.
    """

    model_config = ConfigDict(extra="forbid")

    token: str = Field(pattern=DEDUP_PATTERN)
    user: str = Field(pattern=POSIX_USER, description="POSIX user the job runs as.")
    script: str
    options: dict[str, str | int] = Field(default_factory=dict)
    environment: dict[str, str] = Field(default_factory=dict)
    tasks: list[dict[str, str] | None] | None = Field(
        default=None,
        description="A sweep: one array task per position (None: no task there), each with "
        "its own variables besides ``environment``; the agent submits one array per "
        "MaxArraySize positions, tokens ``<token>a<k>``.",
    )

    @classmethod
    def of(cls, token: str, spec: JobSpec, dependency: str | None = None, *, user: str) -> AgentJob:
        """Build the agent's view of a validated job spec.

        Args:
            token: the de-duplication token (``hpcb:<job id>``).
            spec: the validated spec.
            dependency: the spec's dependencies in Slurm's form (Slurm ids), if any.
            user: the POSIX user the job runs as.
        """
        options: dict[str, str | int] = {}
        for key, value in spec.model_dump(
            exclude={"script", "environment", "tags", "dependency", "hold"}, exclude_none=True
        ).items():
            options[key] = value
        if spec.hold:
            options["hold"] = 1
        if dependency:
            options["dependency"] = dependency
        return cls(
            token=token,
            user=user,
            script=spec.script,
            options=options,
            environment=spec.environment or {},
        )


def _stdout_only() -> list[Literal["stdout", "stderr"]]:
    return ["stdout"]


class OutputQuery(BaseModel):
    """Which part of a job's output files to read (op ``output``).

    ``offset`` None reads the tail (the last ``max_bytes``); otherwise from that byte offset.
    ``patterns`` are the job's ``--output``/``--error`` filename patterns as submitted
    (Slurm's ``%j %A %a %x %u %%``), used when Slurm no longer remembers the job's paths.
    The agent reads the files as ``user``, and only if Slurm's record of ``job_id`` (when it
    has one) is ``user``'s job with ``token`` in its comment.
    """

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(pattern=SLURM_JOB_ID)
    user: str = Field(pattern=POSIX_USER, description="POSIX user the files are read as.")
    token: str = Field(
        pattern=DEDUP_PATTERN, description="The job's token, checked against Slurm's."
    )
    streams: list[Literal["stdout", "stderr"]] = Field(default_factory=_stdout_only)
    offset: int | None = Field(default=None, ge=0)
    max_bytes: int = Field(default=MAX_OUTPUT_BYTES, ge=1, le=MAX_OUTPUT_BYTES)
    patterns: dict[Literal["stdout", "stderr"], str] = Field(default_factory=dict)
    job_name: str | None = None


class JobTarget(BaseModel):
    """A job to act on as its user (op ``cancel``): acted on only if Slurm's record of
    ``job_id`` is ``user``'s job with ``token`` in its comment."""

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(pattern=SLURM_JOB_ID)
    user: str = Field(pattern=POSIX_USER)
    token: str = Field(pattern=DEDUP_PATTERN)


class AgentRequest(BaseModel):
    """What the worker asks of the agent.

    ``jobs`` for ``submit`` (each with its user); ``job_ids`` (Slurm ids) for ``status``, which
    runs as the agent (read-only); ``targets`` for ``cancel`` and ``output`` (with its user) for
    ``output``, which run as the job's user. ``min_uid``: the agent refuses users below it.
    """

    model_config = ConfigDict(extra="forbid")

    v: int = PROTOCOL_VERSION
    op: AgentOp
    jobs: list[AgentJob] = Field(default_factory=list)
    job_ids: list[str] = Field(default_factory=list)
    targets: list[JobTarget] = Field(default_factory=list)
    output: OutputQuery | None = None
    payload_url: str | None = None
    payload_sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="fetch: the staged request's sha256."
    )
    result_put_url: str | None = None
    inline_limit: int = Field(default=20000, ge=0, le=MAX_INLINE_LIMIT)
    lookback_seconds: int | None = Field(
        default=None,
        ge=60,
        le=90 * 86400,
        description="submit: seconds of accounting to search for tokens (agent: 7 days).",
    )
    find_only: bool = Field(
        default=False,
        description=(
            "submit: look the jobs' tokens up (the same per-user search, under the same lock) "
            "and submit nothing; a job not found answers NOT_SUBMITTED."
        ),
    )
    concurrency: int | None = Field(
        default=None, ge=1, le=16, description="submit: sbatch processes in flight (agent: 4)."
    )
    min_uid: int = Field(
        default=DEFAULT_MIN_UID,
        ge=1,
        le=2**32 - 2,
        description="The lowest uid the agent may act as (uid 0 is refused whatever this says).",
    )

    @model_validator(mode="after")
    def _op_fields(self) -> AgentRequest:
        """Each op's own fields only: a cancel names its targets (with their users), not bare
        ids; an output request has its query."""
        if self.op == "cancel" and self.job_ids:
            raise ValueError("cancel takes targets (job id, user, token), not job_ids")
        if self.op == "output" and self.output is None:
            raise ValueError("output needs its query")
        return self


class AgentArray(BaseModel):
    """One array of a sweep: positions ``first`` to ``first + tasks - 1`` as tasks 0, 1, ..."""

    job_id: str
    first: int
    tasks: int


class AgentJobResult(BaseModel):
    """The agent's answer for one job: a Slurm job id, or an error; for a sweep, its arrays
    (and an error for the positions no array holds)."""

    token: str
    job_id: str | None = None
    reused: bool = False
    error: AgentErrorInfo | None = None
    arrays: list[AgentArray] | None = None


class SlurmJobStatus(BaseModel):
    """What Slurm says about one job or array task (op ``status``), as raw as Slurm says it.

    Mapping to broker states is the broker's business (``broker.jobs``), not the agent's.
    Times are ISO 8601 as Slurm prints them (head-node local time, no zone) or None.
    """

    job_id: str = Field(description="Full id: '123', or '123_4' for an array task.")
    base_id: str = Field(description="The job's (or array's) base id, '123'.")
    array_task: str | None = Field(default=None, description="Task index ('4'), if a task.")
    state: str = Field(description="Slurm state word, e.g. COMPLETED, CANCELLED, PENDING.")
    reason: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    submit_time: str | None = None
    start_time: str | None = None
    end_time: str | None = None
    source: Literal["squeue", "sacct", "scontrol"]


class OutputChunk(BaseModel):
    """A piece of one output stream (op ``output``)."""

    stream: Literal["stdout", "stderr"]
    path: str | None = None
    size: int | None = Field(default=None, description="File size in bytes when read.")
    offset: int = Field(default=0, description="Byte offset of ``data`` in the file.")
    length: int = Field(default=0, description="Bytes in ``data`` (before UTF-8 decoding).")
    data: str = Field(default="", description="The bytes, decoded as UTF-8 (invalid -> U+FFFD).")
    eof: bool = Field(default=False, description="True when ``data`` reaches the file's end.")
    error: AgentErrorInfo | None = None


class CancelResult(BaseModel):
    """The agent's answer for one job to cancel."""

    job_id: str
    ok: bool
    error: AgentErrorInfo | None = None


class AgentResponse(BaseModel):
    """What the agent answers."""

    v: int = PROTOCOL_VERSION
    ok: bool
    op: str = ""
    results: list[AgentJobResult] = Field(default_factory=list)
    statuses: list[SlurmJobStatus] = Field(default_factory=list)
    missing: list[str] = Field(
        default_factory=list, description="Asked-for ids neither squeue nor sacct know (yet)."
    )
    accounting: bool | None = Field(
        default=None, description="Whether sacct answered (None: not asked)."
    )
    cancelled: list[CancelResult] = Field(default_factory=list)
    output: list[OutputChunk] = Field(default_factory=list)
    info: dict[str, str] = Field(default_factory=dict)
    error: AgentErrorInfo | None = None
    staged: bool = False


def encode_request(request: AgentRequest) -> str:
    """Encode a request as the agent's single base64 argument."""
    raw = request.model_dump_json(exclude_none=True).encode("utf-8")
    return base64.b64encode(raw).decode("ascii")


def is_safe_payload(payload: str) -> bool:
    """Whether ``payload`` is pure base64, so it can stand on a command line unquoted-safe."""
    return bool(_B64.match(payload))


def decode_response(stdout: str) -> AgentResponse:
    """Parse the agent's stdout (its last non-empty line is the JSON answer).

    Raises:
        TransientError: the output is not an agent answer (agent crashed, truncated output).
    """
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    if not lines:
        raise TransientError("the head-node agent printed nothing", code="AGENT_NO_OUTPUT")
    try:
        return AgentResponse.model_validate(json.loads(lines[-1]))
    except (ValueError, ValidationError) as exc:
        snippet = lines[-1][:200]
        raise TransientError(
            f"the head-node agent's answer is not valid JSON: {snippet!r}", code="AGENT_BAD_OUTPUT"
        ) from exc
