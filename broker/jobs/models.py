"""Job bodies, results and queue messages: what a caller sends to submit, cancel or read the output
of one job, what the job worker receives, and what each request ends with."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from broker.schema import (
    POSIX_USER,
    AbsPath,
    ErrorInfo,
    SlurmWord,
    StrictModel,
    a_json_number,
    closed_keys,
)

#: Largest job script accepted, in UTF-8 bytes. Larger scripts answer 413. The limit keeps a
#: request record well under DynamoDB's 400 KB item limit and a queue message under SQS's.
MAX_SCRIPT_BYTES = 64 * 1024


JobName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]


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


#: The names a job's variables may have: an allowlist, not a denylist (issue 12). Lower-case
#: names are the application's own (shells, loaders and interpreters read only upper-case ones:
#: BASH_ENV, LD_PRELOAD, PYTHONPATH, PERL5OPT, NODE_OPTIONS, PS4, ...); upper-case names only
#: with a prefix the caller owns (APP_, PARAM_, HPCB_) or of the numeric, MPI and GPU libraries
#: a job tunes through its environment. Anything else is a 422 naming the variable.
ENV_NAME_FAMILIES = (
    "APP", "PARAM", "HPCB", "OMP", "MKL", "OPENBLAS", "OMPI_MCA", "I_MPI", "UCX", "FI", "NCCL",
    "CUDA", "KMP", "GOMP", "TF", "TORCH", "HF", "JULIA",
)  # fmt: skip
ENV_NAME_PATTERN = (
    r"^(?:[a-z_][a-z0-9_]{0,127}|(?:" + "|".join(ENV_NAME_FAMILIES) + r")_[A-Za-z0-9_]{1,110})$"
)
EnvName = Annotated[str, StringConstraints(pattern=ENV_NAME_PATTERN)]


#: An environment variable's value: at most 4096 characters, no NUL.
EnvValue = Annotated[str, StringConstraints(pattern=r"^[^\x00]*$", max_length=4096)]


TagKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:/=+@-]{1,128}$")]


TagValue = Annotated[str, StringConstraints(pattern=r"^[^\x00]{0,256}$")]


#: A script whose leading comment block holds a scheduler directive. sbatch (Slurm 22.05, checked
#: on this machine) reads ``#SBATCH`` (and ``#PBS``, ``#BSUB``) lines at column 0, with or
#: without a space before the option, until the first line that is neither blank nor a comment;
#: not ``# SBATCH``, not lower case, not indented. This refuses a superset of that: any case,
#: leading blanks, a blank between ``#`` and the word, and the directives of other schedulers
#: a site may run beside Slurm (MSUB, PJM, FLUX, COBALT, SGE's ``#$``). Lines after the first
#: command are data to sbatch and are left alone (a job may write a script of its own). The
#: pattern is ECMA-262 and Python alike, so the OpenAPI document states it (``not``).
SCHEDULER_DIRECTIVE_PATTERN = (
    r"^(?:[ \t]*(?:#[^\n]*)?\n)*[ \t]*#[ \t]*(?:[Ss][Bb][Aa][Tt][Cc][Hh]|[Pp][Bb][Ss]|"
    r"[Bb][Ss][Uu][Bb]|[Mm][Ss][Uu][Bb]|[Pp][Jj][Mm]|[Ff][Ll][Uu][Xx]|[Cc][Oo][Bb][Aa][Ll][Tt]|\$)"
)
_DIRECTIVE_LINE = re.compile(SCHEDULER_DIRECTIVE_PATTERN[len(r"^(?:[ \t]*(?:#[^\n]*)?\n)*") :])


def scheduler_directive(script: str) -> tuple[int, str] | None:
    """(line number, line) of the first scheduler directive in the script's leading comment
    block, as sbatch would read it (see ``SCHEDULER_DIRECTIVE_PATTERN``); None if there is none."""
    for number, line in enumerate(script.split("\n"), start=1):
        if _DIRECTIVE_LINE.match(line):
            return number, line.strip()[:80]
        if line.strip() and not line.lstrip(" \t").startswith("#"):
            return None
    return None


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
            f"without NUL, at most {MAX_SCRIPT_BYTES} bytes UTF-8 (413 above). No scheduler "
            "directives (#SBATCH, #PBS, #BSUB, ...) in its leading comment block: every option "
            "is a field of the job, validated as such (422 names the line)."
        ),
        min_length=3,
        pattern=r"^#![^\x00]*$",
        # The limit is in bytes (413, checked by the service); JSON Schema counts characters.
        json_schema_extra={
            "maxLength": MAX_SCRIPT_BYTES,
            "not": {"pattern": SCHEDULER_DIRECTIVE_PATTERN},
        },
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
        "Names: lower case, or upper case starting APP_, PARAM_, HPCB_ or a library's prefix "
        f"({', '.join(ENV_NAME_FAMILIES[3:])}). "
        "Names starting SLURM_, SBATCH_, LD_ or BASH_FUNC_, and PATH, HOME, USER, SHELL and the "
        "others listed in the schema, are reserved.",
        json_schema_extra=closed_keys(_RESERVED_ENV_SCHEMA),
    )
    hold: bool = Field(default=False, description="Submit held (--hold); release in Slurm.")
    tags: dict[TagKey, TagValue] | None = Field(
        default=None,
        max_length=50,
        description="Your labels, kept on the broker's job record.",
        json_schema_extra=closed_keys(),
    )

    # These run before the schema's own pattern checks, only to word the common mistakes better.
    @field_validator("script", mode="before")
    @classmethod
    def _script_is_a_script(cls, value: Any) -> Any:
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("the script must not contain NUL characters")
        if isinstance(value, str) and not value.startswith("#!"):
            raise ValueError("the script must start with a shebang line, e.g. '#!/bin/bash'")
        found = scheduler_directive(value) if isinstance(value, str) else None
        if found is not None:
            raise ValueError(
                f"line {found[0]}: {found[1]!r}: scheduler directives are not accepted in a "
                "script; use the job's fields instead (name, partition, time_limit, nodes, "
                "ntasks, mem, array, dependency, ...), which are validated"
            )
        return value

    _integers = field_validator("nodes", "ntasks", "cpus_per_task", mode="before")(a_json_number)

    @field_validator("working_directory", "output", "error", mode="before")
    @classmethod
    def _no_parent_components(cls, value: Any) -> Any:
        if isinstance(value, str) and ".." in value.split("/"):
            raise ValueError("the path must not contain '..' components")
        return value

    @field_validator("environment", mode="before")
    @classmethod
    def _environment_names_are_allowed(cls, value: Any) -> Any:
        for name in value if isinstance(value, dict) else ():
            if isinstance(name, str) and not re.fullmatch(ENV_NAME_PATTERN, name):
                raise ValueError(
                    f"the variable name {name!r} is not allowed: use a lower-case name (e.g. "
                    "'input_file') or an upper-case one starting APP_, PARAM_ or HPCB_ (or a "
                    "library's own: OMP_, MKL_, OMPI_MCA_, CUDA_, ...)"
                )
        return value

    @field_validator("environment")
    @classmethod
    def _environment_is_safe(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name in value or {}:
            if name in RESERVED_ENV_NAMES or name.startswith(RESERVED_ENV_PREFIXES):
                raise ValueError(f"the variable name {name!r} is reserved")
        return value


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


#: Largest output offset a caller may ask for (a file offset must fit the head node's off_t;
#: 1 PiB is far beyond any job's output).
MAX_OUTPUT_OFFSET = 2**50


class OutputQueryBody(StrictModel):
    """Which output to fetch (``POST /v1/clusters/{cluster}/jobs/{job_id}/output``)."""

    _integers = field_validator("offset", "max_bytes", "task", mode="before")(a_json_number)

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
    user: str = Field(pattern=POSIX_USER, description="POSIX user it runs as (recorded at accept).")
    spec: JobSpec


class JobCancelMessage(BaseModel):
    """Queue message: cancel a job in Slurm."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    kind: Literal["job.cancel"] = "job.cancel"
    request_id: str
    owner: str
    cluster: str
    user: str = Field(pattern=POSIX_USER, description="POSIX user it runs as (recorded at accept).")
    job_id: str


class JobOutputMessage(BaseModel):
    """Queue message: fetch a job's output."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    kind: Literal["job.output"] = "job.output"
    request_id: str
    owner: str
    cluster: str
    user: str = Field(pattern=POSIX_USER, description="POSIX user it runs as (recorded at accept).")
    job_id: str
    query: OutputQueryBody


def slurm_token(request_id: str) -> str:
    """The deterministic token a job carries in its Slurm comment for de-duplication."""
    return f"hpcb:{request_id}"


def sweep_token(batch_id: str, chunk: int) -> str:
    """The token of a sweep's chunk: each of its arrays carries it plus ``a<k>`` (the agent
    takes either for a cancel or an output read of one of the chunk's tasks)."""
    return f"hpcb:{batch_id}c{chunk}"
