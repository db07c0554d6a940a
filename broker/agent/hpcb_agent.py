#!/usr/bin/env python3
"""hpc-broker head-node agent: the only code that runs on a cluster's head node.

Usage::

    python3 hpcb_agent.py <base64 AgentRequest JSON>
    python3 hpcb_agent.py -          # the same payload on standard input

It answers with ONE JSON line on stdout (an ``AgentResponse``; see ``broker/agent/protocol.py``)
and exits 0 whenever it could answer, errors included; a non-zero exit means it crashed.

Constraints, because this file travels to the head node inside an SSM command and runs as root:

* standard library only, Python 3.7+ (Amazon Linux 2): no walrus, no ``str.removeprefix``, no
  builtin generics at runtime, no ``match``;
* nothing may use ``__file__`` at import time (the runner ``exec``s the source under ``-c``);
* user data never reaches a shell or a command line: every scheduler call is an argv list run with
  ``shell=False``, every option is re-validated here (the last stop before a root process) and
  passed as its own ``--opt=value`` argument, and the job script travels on sbatch's stdin.

Users: the agent runs as root, but never acts for a user as root. Every job, cancel and output
read names its POSIX user; the agent re-validates it (``resolve_user``: name shape, exists here,
uid and groups not 0, uid >= the request's ``min_uid``) before any Slurm call, then runs sbatch,
scancel and the output reader under ``setpriv --reuid --regid --init-groups`` with a clean
environment it builds (``RunAs``), so Slurm records the job as that user's and the kernel checks
every file access against that user's rights. Only read-only queries (squeue, sacct, scontrol)
run as the agent. Before a cancel or an output read, Slurm's user and comment of the job must be
the request's user and token (a stale record never touches a job that reuses the Slurm id).

Exactly-once: every job carries a token (``hpcb:<request id>``) in its Slurm comment. Under an
exclusive ``flock`` (so two deliveries of the same message serialize), the agent lists the tokens
of the job's user already in Slurm (one ``squeue -u``, plus one ``sacct -u`` when accounting
exists) and answers ``reused: true`` for a token it finds instead of submitting it again; another
user's job carrying the token is never taken for it.

Ops: ``ping``, ``submit``, ``status`` (one squeue, at most one sacct, for any number of jobs),
``cancel`` (one scancel), ``output`` (reads a job's stdout/stderr files), and ``fetch`` (any of
them, staged in S3). Every Slurm client runs with a small clean environment (``base_environment``):
a site's ``SQUEUE_FORMAT``/``SLURM_TIME_FORMAT`` cannot change what the parsers read, and the
broker's own environment never reaches a job.

Layout, in this order: 1. protocol and validation (what a request may contain: every string
checked against a pattern, every integer bounded, so a bad request is a permanent error, never
a crash); 2. commands (one ``SlurmCommand`` class per Slurm call: its argv, and the parser of
its outcome); 3. output files; 4. effects (processes, HTTP); 5. locking; 6. operations (the
``Agent``: each op validates, runs commands through ``Agent.execute``, the one place a Slurm
client starts, and builds its answer); 7. main.
"""

from __future__ import annotations

import base64
import binascii
import errno
import fcntl
import hashlib
import json
import os
import platform
import pwd
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from typing import (
    Any,
    Callable,
    Dict,
    Generic,
    Iterable,
    List,
    Mapping,
    Optional,
    Tuple,
    TypeVar,
)

AGENT_VERSION = "1.0.0"
#: Imported where used: most runs need none, and they were 60 ms of a 180 ms start.
LAZY_IMPORTS = ("http.client", "urllib.request", "concurrent.futures")
PROTOCOL_VERSION = 1

#: Default lock file; ``HPCB_AGENT_LOCK`` overrides it (tests, several agents on one machine).
DEFAULT_LOCK_PATH = "/var/tmp/hpcb-agent.lock"  # noqa: S108 - opened with O_NOFOLLOW, 0600
#: How long a call waits for another agent call to release the lock before giving up (transient).
LOCK_WAIT_SECONDS = 90.0

SBATCH_TIMEOUT_SECONDS = 30.0
#: sbatch processes in flight at once within one submit (the request's ``concurrency``, capped):
#: the pacing of slurmctld. One submit runs at a time per head node (the lock), so this bounds
#: the cluster's concurrent submissions from the broker.
DEFAULT_SUBMIT_CONCURRENCY = 4
MAX_SUBMIT_CONCURRENCY = 16
QUERY_TIMEOUT_SECONDS = 30.0
HTTP_TIMEOUT_SECONDS = 30.0
#: Largest staged request the agent downloads (a fetch of a bigger object is refused).
MAX_FETCH_BYTES = 64 * 1024 * 1024
#: Same limit as ``broker.jobs.models.MAX_SCRIPT_BYTES``.
MAX_SCRIPT_BYTES = 64 * 1024
#: ParallelCluster installs Slurm here; SSM runs commands with a minimal PATH that may miss it.
FALLBACK_SLURM_BIN = "/opt/slurm/bin"
#: How far back ``sacct`` looks for tokens, unless the request says (``lookback_seconds``).
SACCT_WINDOW = "now-7days"
MIN_LOOKBACK_SECONDS = 60
MAX_LOOKBACK_SECONDS = 90 * 86400
MAX_MESSAGE_CHARS = 1000
#: Digits of the longest integer a request may carry: enough for any field (2**64 has 20), and
#: a bound on the work of parsing one (Python 3.7's ``int()`` of n digits takes O(n**2)).
MAX_INT_DIGITS = 20
#: Largest output ``offset``: a 4 EiB file. Above 2**63 - 1, ``os.pread`` overflows.
MAX_OUTPUT_OFFSET = 2**62
#: Largest ``inline_limit`` (``protocol.MAX_INLINE_LIMIT``): far above any runner's stdout.
MAX_INLINE_LIMIT = 16 * 1024 * 1024

# Error codes (stable: the worker and the API expose them).
BAD_PAYLOAD = "BAD_PAYLOAD"
BAD_REQUEST = "BAD_REQUEST"
UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"
INVALID_OPTION = "INVALID_OPTION"
INVALID_SCRIPT = "INVALID_SCRIPT"
INVALID_JOB = "INVALID_JOB"
SCHEDULER_UNAVAILABLE = "SCHEDULER_UNAVAILABLE"
SCHEDULER_REJECTED = "SCHEDULER_REJECTED"
SLURM_NOT_FOUND = "SLURM_NOT_FOUND"
SBATCH_BAD_OUTPUT = "SBATCH_BAD_OUTPUT"
AGENT_BUSY = "AGENT_BUSY"
FETCH_FAILED = "FETCH_FAILED"
RESULT_UPLOAD_FAILED = "RESULT_UPLOAD_FAILED"
AGENT_CRASHED = "AGENT_CRASHED"
JOB_ALREADY_FINISHED = "JOB_ALREADY_FINISHED"
JOB_NOT_FOUND = "JOB_NOT_FOUND"
OUTPUT_NOT_FOUND = "OUTPUT_NOT_FOUND"
OUTPUT_UNREADABLE = "OUTPUT_UNREADABLE"
#: The request's POSIX user may not be used (bad name, unknown here, root, uid below min_uid).
USER_REFUSED = "USER_REFUSED"
#: The Slurm job with the request's id is not the request's job (another user's, another token).
JOB_MISMATCH = "JOB_MISMATCH"
#: A job's dependency names a Slurm job of another user (the broker resolves its own ids first).
DEPENDENCY_NOT_FOUND = "DEPENDENCY_NOT_FOUND"
#: ``submit`` with ``find_only``: no job of the user carries the token (nothing was submitted).
NOT_SUBMITTED = "NOT_SUBMITTED"


# ==== 1. protocol and validation: what a request may contain =====================================


# ---- validation: the same tight patterns as broker/models.py -----------------------------------
# Always used with ``fullmatch``: unlike ``match``, a trailing newline cannot slip past ``$``.

_TOKEN = re.compile(r"^hpcb:[a-z0-9]{1,64}$")
_SLURM_WORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_TIME_LIMIT = re.compile(
    r"^(UNLIMITED|\d{1,7}|\d{1,7}:\d{1,2}|\d{1,7}:\d{1,2}:\d{1,2}|\d{1,4}-\d{1,2}(:\d{1,2}){0,2})$"
)
_MEMORY = re.compile(r"^[1-9]\d{0,8}[KMGT]?$")
#: ``broker.schema.AbsPath`` plus a lookahead refusing '..' components (JobSpec does that in a
#: validator); the lookahead stands before the first '/', so '/..' and '/../x' are refused too.
#: Its length (1024 at most) is checked beside it (``is_abs_path``), as JobSpec does.
_PATH_COMPONENT = r"(?:[^/\x00\n\r]{3,}|[^./\x00\n\r][^/\x00\n\r]|\.[^./\x00\n\r]|[^/\x00\n\r]?)"
_ABS_PATH = re.compile(r"^(?!.*(^|/)\.\.(/|$))/(?:%s/)*%s$" % (_PATH_COMPONENT, _PATH_COMPONENT))
MAX_PATH_CHARS = 1024


def is_abs_path(value: Any) -> bool:
    """An absolute path as JobSpec's AbsPath takes it: no '..' component, at most 1024 chars."""
    return (
        isinstance(value, str) and len(value) <= MAX_PATH_CHARS and bool(_ABS_PATH.fullmatch(value))
    )


_ARRAY = re.compile(
    r"^[0-9]{1,7}(-[0-9]{1,7}(:[0-9]{1,7})?)?(,[0-9]{1,7}(-[0-9]{1,7}(:[0-9]{1,7})?)?)*"
    r"(%[0-9]{1,5})?$"
)
#: ``type:id[:id...][,type:id...]``: at most 20 conditions of at most 100 jobs (JobSpec's limits).
_DEPENDENCY = re.compile(
    r"^(after|afterok|afterany|afternotok)(:[0-9]{1,10}(_[0-9]{1,7})?){1,100}"
    r"(,(after|afterok|afterany|afternotok)(:[0-9]{1,10}(_[0-9]{1,7})?){1,100}){0,19}$"
)
_DIGITS = re.compile(r"^[0-9]{1,7}$")
_JOB_ID = re.compile(r"^[0-9]{1,20}$")
#: ``protocol.SLURM_JOB_ID``: a base id, or an array task ``<base>_<index>``.
_SLURM_JOB_ID = re.compile(r"^[0-9]{1,10}(_[0-9]{1,7})?$")
#: ``broker.jobs.models.ENV_NAME_PATTERN``: the allowlist of a job's variable names (tested equal).
_ENV_NAME = re.compile(
    r"^(?:[a-z_][a-z0-9_]{0,127}|(?:APP|PARAM|HPCB|OMP|MKL|OPENBLAS|OMPI_MCA|I_MPI|UCX|FI|NCCL|"
    r"CUDA|KMP|GOMP|TF|TORCH|HF|JULIA)_[A-Za-z0-9_]{1,110})$"
)
#: Same as broker.jobs.models: Slurm's own variables and the loader's.
RESERVED_ENV_PREFIXES = ("SLURM_", "SBATCH_", "LD_", "BASH_FUNC_")
RESERVED_ENV_NAMES = frozenset(["PATH", "HOME", "USER", "LOGNAME", "SHELL", "IFS", "ENV"])
#: Also refused here: the user's variables are the environment of sbatch itself, a root process on
#: the head node, and glibc reads these (its list of variables unsafe for setuid programs, less
#: TMPDIR, which jobs use and sbatch does not).
LIBC_ENV_NAMES = frozenset(
    [
        "GCONV_PATH",
        "GETCONF_DIR",
        "GLIBC_TUNABLES",
        "HOSTALIASES",
        "LOCALDOMAIN",
        "LOCPATH",
        "MALLOC_TRACE",
        "NIS_PATH",
        "NLSPATH",
        "RESOLV_HOST_CONF",
        "RES_OPTIONS",
        "TZDIR",
    ]
)
MAX_ENV_VARS = 128
MAX_ENV_VALUE_CHARS = 4096
#: Variables of the agent's own environment that Slurm clients (and so jobs) get.
BASE_ENV_NAMES = ("PATH", "HOME", "LANG", "LC_ALL", "SLURM_CONF", "TZ")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class AgentError(Exception):
    """An error the agent reports in its JSON answer (for one job or for the whole call)."""

    def __init__(self, code: str, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.transient = transient

    def to_json(self) -> Dict[str, Any]:
        return {"code": self.code, "message": self.message, "transient": self.transient}


class _Option(object):
    """How one option is checked (``check``) and turned into sbatch arguments (``args``)."""

    def check(self, key: str, value: Any) -> str:
        raise NotImplementedError

    def args(self, flag: str, key: str, value: Any) -> List[str]:
        return [flag + "=" + self.check(key, value)]


class _Text(_Option):
    """A string option checked against a pattern (and a length, when the pattern has none)."""

    def __init__(self, pattern: "re.Pattern[str]", what: str, max_chars: int = 4096) -> None:
        self.pattern = pattern
        self.what = what
        self.max_chars = max_chars

    def check(self, key: str, value: Any) -> str:
        if (
            not isinstance(value, str)
            or len(value) > self.max_chars
            or not self.pattern.fullmatch(value)
        ):
            raise AgentError(INVALID_OPTION, "option %r: expected %s" % (key, self.what))
        return value


class _Int(_Option):
    """A positive integer option with an upper bound (an int, or a string of digits)."""

    def __init__(self, low: int, high: int) -> None:
        self.low = low
        self.high = high

    def check(self, key: str, value: Any) -> str:
        number = None  # type: Optional[int]
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and _DIGITS.fullmatch(value):
            number = int(value)
        if number is None or not self.low <= number <= self.high:
            raise AgentError(
                INVALID_OPTION,
                "option %r: expected an integer from %d to %d" % (key, self.low, self.high),
            )
        return str(number)


class _Flag(_Int):
    """A switch: 1 adds the bare flag (``--hold``), 0 adds nothing."""

    def __init__(self) -> None:
        super().__init__(0, 1)

    def args(self, flag: str, key: str, value: Any) -> List[str]:
        return [flag] if self.check(key, value) == "1" else []


_NAME_TEXT = "a Slurm name ([A-Za-z0-9_.-], max 64)"
_PATH_TEXT = "an absolute path without '..'"

#: Option key -> (sbatch flag, validator). The order here is the order in the argv.
OPTIONS = (
    ("name", "--job-name", _Text(_JOB_NAME, "a job name ([A-Za-z0-9][A-Za-z0-9_.-]{0,127})")),
    ("partition", "--partition", _Text(_SLURM_WORD, _NAME_TEXT)),
    ("account", "--account", _Text(_SLURM_WORD, _NAME_TEXT)),
    ("qos", "--qos", _Text(_SLURM_WORD, _NAME_TEXT)),
    ("time_limit", "--time", _Text(_TIME_LIMIT, "minutes, [D-]HH:MM:SS or UNLIMITED")),
    ("nodes", "--nodes", _Int(1, 10000)),
    ("ntasks", "--ntasks", _Int(1, 1000000)),
    ("cpus_per_task", "--cpus-per-task", _Int(1, 1024)),
    ("mem", "--mem", _Text(_MEMORY, "a memory size such as 4G")),
    ("working_directory", "--chdir", _Text(_ABS_PATH, _PATH_TEXT, MAX_PATH_CHARS)),
    ("output", "--output", _Text(_ABS_PATH, _PATH_TEXT, MAX_PATH_CHARS)),
    ("error", "--error", _Text(_ABS_PATH, _PATH_TEXT, MAX_PATH_CHARS)),
    ("array", "--array", _Text(_ARRAY, "an array spec such as 1-100%10", 256)),
    (
        "dependency",
        "--dependency",
        _Text(_DEPENDENCY, "Slurm dependencies such as afterok:12:13_2,afterany:14", 65536),
    ),
    ("hold", "--hold", _Flag()),
)  # type: Tuple[Tuple[str, str, _Option], ...]
_OPTION_KEYS = frozenset(key for key, _, _ in OPTIONS)


def validate_token(token: Any) -> str:
    """Return the token if it is a well-formed ``hpcb:<id>`` token, else raise INVALID_JOB."""
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise AgentError(INVALID_JOB, "job token must look like 'hpcb:<lowercase id>'")
    return token


#: ``broker.jobs.models.SCHEDULER_DIRECTIVE_PATTERN`` (a test keeps them equal): a scheduler
#: directive in the script's leading comment block, which sbatch would read as options.
SCHEDULER_DIRECTIVE_PATTERN = (
    r"^(?:[ \t]*(?:#[^\n]*)?\n)*[ \t]*#[ \t]*(?:[Ss][Bb][Aa][Tt][Cc][Hh]|[Pp][Bb][Ss]|"
    r"[Bb][Ss][Uu][Bb]|[Mm][Ss][Uu][Bb]|[Pp][Jj][Mm]|[Ff][Ll][Uu][Xx]|[Cc][Oo][Bb][Aa][Ll][Tt]|\$)"
)
_SCHEDULER_DIRECTIVE = re.compile(SCHEDULER_DIRECTIVE_PATTERN)


def validate_script(script: Any) -> bytes:
    """Return the script as UTF-8 bytes if it is an acceptable batch script (no scheduler
    directive: options come only from the validated fields, and sbatch runs with --ignore-pbs)."""
    if not isinstance(script, str):
        raise AgentError(INVALID_SCRIPT, "the script must be a string")
    if "\x00" in script:
        raise AgentError(INVALID_SCRIPT, "the script must not contain NUL characters")
    if not script.startswith("#!"):
        raise AgentError(INVALID_SCRIPT, "the script must start with a shebang line")
    if _SCHEDULER_DIRECTIVE.search(script):
        raise AgentError(INVALID_SCRIPT, "scheduler directives (#SBATCH, #PBS, ...) are refused")
    data = script.encode("utf-8")
    if len(data) > MAX_SCRIPT_BYTES:
        raise AgentError(INVALID_SCRIPT, "the script is larger than %d bytes" % MAX_SCRIPT_BYTES)
    return data


def option_args(options: Any) -> List[str]:
    """Validate job options and return their sbatch arguments (``--opt=value`` or ``--hold``).

    Unknown keys are refused (``INVALID_OPTION``): the agent never passes through anything it
    has not checked itself.
    """
    if not isinstance(options, dict):
        raise AgentError(INVALID_OPTION, "options must be an object")
    unknown = sorted(str(key) for key in options if key not in _OPTION_KEYS)
    if unknown:
        raise AgentError(INVALID_OPTION, "unknown option(s): %s" % ", ".join(unknown)[:200])
    args = []  # type: List[str]
    for key, flag, validator in OPTIONS:
        if key in options and options[key] is not None:
            args.extend(validator.args(flag, key, options[key]))
    return args


def validate_environment(environment: Any) -> Dict[str, str]:
    """The job's variables, if every name and value is acceptable (else INVALID_OPTION)."""
    if not isinstance(environment, dict) or len(environment) > MAX_ENV_VARS:
        raise AgentError(INVALID_OPTION, "environment: at most %d variables" % MAX_ENV_VARS)
    for name, value in environment.items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise AgentError(INVALID_OPTION, "environment: bad variable name %r" % (name,))
        if (
            name in RESERVED_ENV_NAMES
            or name in LIBC_ENV_NAMES
            or name.startswith(RESERVED_ENV_PREFIXES)
        ):
            raise AgentError(INVALID_OPTION, "environment: the name %r is reserved" % name)
        if not isinstance(value, str) or "\x00" in value or len(value) > MAX_ENV_VALUE_CHARS:
            raise AgentError(
                INVALID_OPTION,
                "environment: %r must be text without NUL, at most %d characters"
                % (name, MAX_ENV_VALUE_CHARS),
            )
    return dict(environment)


MAX_JOB_IDS = 5000


def validate_job_ids(job_ids: Any) -> List[str]:
    """The requested Slurm ids, without duplicates (BAD_REQUEST if any is malformed)."""
    if not isinstance(job_ids, list) or len(job_ids) > MAX_JOB_IDS:
        raise AgentError(BAD_REQUEST, "job_ids must be a list of at most %d ids" % MAX_JOB_IDS)
    unique = []  # type: List[str]
    for job_id in job_ids:
        if not isinstance(job_id, str) or not _SLURM_JOB_ID.fullmatch(job_id):
            raise AgentError(BAD_REQUEST, "not a Slurm job id: %r" % (str(job_id)[:40],))
        if job_id not in unique:
            unique.append(job_id)
    return unique


# ---- the POSIX user a job, cancel or output read runs as ---------------------------------------

#: ``protocol.POSIX_USER``: the portable user name shape (useradd's default, 32 characters).
_POSIX_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
DEFAULT_MIN_UID = 1000
MAX_UID = 2**32 - 2
#: ``passwd`` lookup by name (``pwd.getpwnam``; tests inject a fake one).
UserLookup = Callable[[str], Any]


class RunAs(object):
    """A validated POSIX user: the ``setpriv`` prefix and clean environment of its processes."""

    def __init__(self, name: str, uid: int, gid: int, home: str) -> None:
        self.name = name
        self.uid = uid
        self.gid = gid
        self.home = home

    def prefix(self) -> List[str]:
        """setpriv drops to the user (its groups from /etc/group) and execs the rest of argv."""
        return ["setpriv", "--reuid=%d" % self.uid, "--regid=%d" % self.gid, "--init-groups", "--"]

    def environment(self, base: Mapping[str, str]) -> Dict[str, str]:
        """What a process started as the user gets: built here, nothing else of the agent's
        (``base`` is the agent's clean environment: its SLURM_CONF, and its PATH for
        ``user_path``)."""
        path = user_path(base.get("PATH", ""))
        env = {"HOME": self.home, "USER": self.name, "LOGNAME": self.name, "PATH": path}
        if base.get("SLURM_CONF"):
            env["SLURM_CONF"] = base["SLURM_CONF"]
        return env


def user_path(agent_path: str) -> str:
    """The PATH of a process started as a user, never the agent's own: the directory of the
    sbatch the agent would run (where this head node's Slurm clients are; ParallelCluster's
    /opt/slurm/bin when the agent finds none), then the system's directories."""
    found = shutil.which("sbatch", path=agent_path) if agent_path else None
    first = os.path.dirname(found) if found else FALLBACK_SLURM_BIN
    return ":".join([first] + [d for d in DEFAULT_PATH.split(":") if d != first])


def validate_min_uid(value: Any) -> int:
    """The request's ``min_uid`` (default 1000), at least 1: uid 0 is refused whatever it says."""
    if value is None:
        return DEFAULT_MIN_UID
    _bounded_int(value, "min_uid", 1, MAX_UID)
    return int(value)


def resolve_user(name: Any, min_uid: int, lookup: UserLookup) -> RunAs:
    """The user a request names, if the agent may act as it; else USER_REFUSED (permanent).

    Re-validated here, whatever the broker checked: the name's shape, that it exists on this
    head node, that neither its uid nor its primary group is 0 (nor any of its groups: root's
    group reads what root's files let it), and that its uid is at least ``min_uid``.
    """
    if not isinstance(name, str) or not _POSIX_USER.fullmatch(name):
        raise AgentError(USER_REFUSED, "not a POSIX user name: %r" % (str(name)[:40],))
    try:
        entry = lookup(name)
    except KeyError as exc:
        raise AgentError(USER_REFUSED, "no user %r on this head node" % name) from exc
    uid, gid = int(entry.pw_uid), int(entry.pw_gid)
    if uid == 0 or gid == 0:
        raise AgentError(USER_REFUSED, "refusing to act as %r: uid or group 0" % name)
    if uid < min_uid:
        raise AgentError(
            USER_REFUSED, "refusing to act as %r: uid %d is below %d" % (name, uid, min_uid)
        )
    try:
        groups = os.getgrouplist(name, gid)
    except OSError:
        groups = [gid]
    if 0 in groups:
        raise AgentError(USER_REFUSED, "refusing to act as %r: member of group 0" % name)
    return RunAs(name, uid, gid, str(entry.pw_dir) or "/")


MAX_TARGETS = MAX_JOB_IDS


def validate_targets(targets: Any) -> List[Tuple[str, str, str]]:
    """Cancel's jobs: (Slurm id, user, token) each, without duplicates (else BAD_REQUEST).

    The user is checked later, per job (``resolve_user``); here only the request's shape.
    """
    if not isinstance(targets, list) or len(targets) > MAX_TARGETS:
        raise AgentError(BAD_REQUEST, "targets must be a list of at most %d jobs" % MAX_TARGETS)
    unique = []  # type: List[Tuple[str, str, str]]
    for target in targets:
        if not isinstance(target, dict) or set(target) != {"job_id", "user", "token"}:
            raise AgentError(BAD_REQUEST, "a target is {job_id, user, token}")
        job_id, user, token = target["job_id"], target["user"], target["token"]
        if not isinstance(job_id, str) or not _SLURM_JOB_ID.fullmatch(job_id):
            raise AgentError(BAD_REQUEST, "not a Slurm job id: %r" % (str(job_id)[:40],))
        item = (job_id, str(user), validate_token(token))
        if item not in unique:
            unique.append(item)
    return unique


STREAMS = ("stdout", "stderr")
#: ``protocol.MAX_OUTPUT_BYTES``: the most one chunk may carry.
MAX_OUTPUT_BYTES = 64 * 1024


def validate_output_query(query: Any) -> Dict[str, Any]:
    """An ``OutputQuery`` re-validated (BAD_REQUEST when anything is off)."""
    if not isinstance(query, dict):
        raise AgentError(BAD_REQUEST, "output must be an object")
    job_id = query.get("job_id")
    streams = query.get("streams", ["stdout"])
    offset = query.get("offset")
    max_bytes = query.get("max_bytes", MAX_OUTPUT_BYTES)
    patterns = query.get("patterns") or {}
    name = query.get("job_name")
    token = query.get("token")
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise AgentError(BAD_REQUEST, "output.token must be the job's 'hpcb:<id>' token")
    if not isinstance(job_id, str) or not _SLURM_JOB_ID.fullmatch(job_id):
        raise AgentError(BAD_REQUEST, "output.job_id must be a Slurm job id")
    if not isinstance(streams, list) or not set(streams) <= set(STREAMS) or not streams:
        raise AgentError(BAD_REQUEST, "output.streams must list stdout and/or stderr")
    if offset is not None:
        _bounded_int(offset, "output.offset", 0, MAX_OUTPUT_OFFSET)
    if not _is_int(max_bytes) or not 1 <= max_bytes <= MAX_OUTPUT_BYTES:
        raise AgentError(BAD_REQUEST, "output.max_bytes must be 1 to %d" % MAX_OUTPUT_BYTES)
    if not isinstance(patterns, dict) or any(
        key not in STREAMS or not is_abs_path(value) for key, value in patterns.items()
    ):
        raise AgentError(BAD_REQUEST, "output.patterns must be absolute paths without '..'")
    if name is not None and (not isinstance(name, str) or not _JOB_NAME.fullmatch(name)):
        raise AgentError(BAD_REQUEST, "output.job_name must be a job name")
    return {
        "job_id": job_id,
        "streams": [
            stream for index, stream in enumerate(streams) if stream not in streams[:index]
        ],
        "offset": offset,
        "max_bytes": max_bytes,
        "patterns": patterns,
        "job_name": name,
        "user": query.get("user"),
        "token": token,
    }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bounded_int(value: Any, name: str, low: int, high: int) -> None:
    """BAD_REQUEST unless ``value`` is an int (not a bool) within ``low..high``."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise AgentError(BAD_REQUEST, "%s must be an integer %d..%d" % (name, low, high))


_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _check_url(url: Any) -> str:
    """https only (plain http only to this machine: the local stack's moto)."""
    parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if parts is None or not (
        parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK)
    ):
        raise AgentError(BAD_REQUEST, "URLs must be https")
    return str(url)


def parse_int(text: str) -> int:
    """``json.loads``'s integer parser, bounded to ``MAX_INT_DIGITS`` digits (else BAD_PAYLOAD)."""
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise AgentError(
            BAD_PAYLOAD, "integers in a request have at most %d digits" % MAX_INT_DIGITS
        )
    return int(text)


def decode_payload(payload: str) -> Dict[str, Any]:
    """Base64 JSON -> request dict; ``AgentError(BAD_PAYLOAD)`` for anything else."""
    try:
        raw = base64.b64decode(payload.strip().encode("ascii"), validate=True)
        request = json.loads(raw.decode("utf-8"), parse_int=parse_int)
    except (ValueError, UnicodeError, binascii.Error) as exc:
        raise AgentError(BAD_PAYLOAD, "the payload is not base64-encoded JSON: %s" % exc) from exc
    if not isinstance(request, dict):
        raise AgentError(BAD_PAYLOAD, "the payload must be a JSON object")
    return request


def error_response(op: str, error: AgentError) -> Dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "ok": False, "op": op, "error": error.to_json()}


def dumps(document: Dict[str, Any]) -> str:
    return json.dumps(document, separators=(",", ":"), sort_keys=False)


def _result_json(result: Dict[str, Any]) -> Dict[str, Any]:
    document = {"token": result.get("token", "")}  # type: Dict[str, Any]
    if result.get("job_id") is not None:
        document["job_id"] = result["job_id"]
    if result.get("reused"):
        document["reused"] = True
    if "arrays" in result:
        document["arrays"] = result["arrays"]
    error = result.get("error")
    if isinstance(error, AgentError):
        document["error"] = error.to_json()
    return document


def validate_staging(request: Dict[str, Any]) -> None:
    """BAD_REQUEST unless the answer's staging settings (URL, ``inline_limit``) are acceptable.

    Checked before the op runs: refusing them afterwards would answer an error for jobs that
    are already in Slurm.
    """
    if request.get("result_put_url"):
        _check_url(request["result_put_url"])
    _bounded_int(request.get("inline_limit", 20000), "inline_limit", 0, MAX_INLINE_LIMIT)


def effective_request(request: Dict[str, Any], inner: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Staging settings for a fetched request: the inner request's, else the outer one's."""
    if inner is None:
        return request
    merged = dict(request)
    for key in ("result_put_url", "inline_limit"):
        if key in inner:
            merged[key] = inner[key]
    return merged


# ==== 2. commands: one class per Slurm call (argv builder + output parser) =======================


def base_environment(environ: Mapping[str, str]) -> Dict[str, str]:
    """The environment every Slurm client runs with: a few of the agent's own variables."""
    env = {name: environ[name] for name in BASE_ENV_NAMES if environ.get(name)}
    env.setdefault("PATH", DEFAULT_PATH)
    return env


T = TypeVar("T")
#: What a command's ``parse`` returns (covariant: a command only produces it).
Result_co = TypeVar("Result_co", covariant=True)


class SlurmError(AgentError):
    """A Slurm client ran and failed: its own words, classified (transient or not)."""


class SlurmCommand(Generic[Result_co]):
    """One Slurm client call, as FirecREST v2 does it.

    ``argv()`` is the argument list (no shell ever; ``argv[0]`` names the client), ``stdin()``
    and ``env(base)`` the rest of its input; ``parse()`` turns the exit status, stdout and stderr
    into a result or raises a typed ``AgentError``. ``Agent.execute`` is the one place a command
    runs: a command with a ``run_as`` user runs under that user's ``setpriv`` prefix, with the
    user's clean environment as ``base``; one without runs as the agent (read-only queries).
    """

    timeout = QUERY_TIMEOUT_SECONDS
    run_as = None  # type: Optional[RunAs]

    def argv(self) -> List[str]:
        raise NotImplementedError

    def stdin(self) -> Optional[bytes]:
        return None

    def env(self, base: Mapping[str, str]) -> Dict[str, str]:
        return dict(base)

    def parse(self, returncode: int, stdout: str, stderr: str) -> Result_co:
        raise NotImplementedError

    def unavailable(self, code: int, stderr: str, limit: int = MAX_MESSAGE_CHARS) -> SlurmError:
        """The transient error of a query that failed: the client's words, else its status."""
        message = trim_message(stderr, limit) or "%s exited with status %d" % (self.argv()[0], code)
        return SlurmError(SCHEDULER_UNAVAILABLE, message, transient=True)


class SbatchVersionCommand(SlurmCommand[str]):
    """``sbatch --version`` (op ping): Slurm's version, or what sbatch said instead."""

    def argv(self) -> List[str]:
        return ["sbatch", "--version"]

    def parse(self, returncode: int, stdout: str, stderr: str) -> str:
        return (stdout.strip() if returncode == 0 else "") or trim_message(stderr)


# ---- sbatch -------------------------------------------------------------------------------------

#: Fragments of sbatch errors that mean "the scheduler cannot take it now; try later".
TRANSIENT_SBATCH_ERRORS = (
    "socket timed out",
    "unable to contact slurm controller",
    "resource temporarily unavailable",
    "slurm temporarily unable",
    "zero bytes were transmitted or received",
    "communication connection failure",
    "slurmctld not responding",
    "munge encode failed",
    "protocol authentication error",
)


def trim_message(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Non-empty lines of a tool's stderr joined with '; ', cut to ``limit`` characters."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    joined = "; ".join(lines)
    if len(joined) > limit:
        joined = joined[: limit - 3] + "..."
    return joined


def classify_sbatch_failure(returncode: int, stderr: str) -> AgentError:
    """Turn a failed sbatch run into a transient or permanent error with sbatch's own words."""
    message = trim_message(stderr) or ("sbatch exited with status %d" % returncode)
    lowered = stderr.lower()
    for fragment in TRANSIENT_SBATCH_ERRORS:
        if fragment in lowered:
            return AgentError(SCHEDULER_UNAVAILABLE, message, transient=True)
    return AgentError(SCHEDULER_REJECTED, message)


_JOB_KEYS = frozenset(["token", "script", "options", "environment", "user", "tasks"])


class SbatchCommand(SlurmCommand[str]):
    """``sbatch`` for one job: validated argv, the script as stdin data, and the output parser.

    ``run_as``: the job's user (``resolve_user``); sbatch runs as that user, so the job does.
    Raises ``AgentError`` (permanent) on construction when the job is not acceptable.
    """

    timeout = SBATCH_TIMEOUT_SECONDS

    def __init__(self, job: Any, run_as: Optional[RunAs] = None) -> None:
        self.run_as = run_as
        if not isinstance(job, dict):
            raise AgentError(INVALID_JOB, "a job must be an object")
        unknown = sorted(str(key) for key in job if key not in _JOB_KEYS)
        if unknown:
            raise AgentError(INVALID_JOB, "unknown job field(s): %s" % ", ".join(unknown)[:200])
        self.token = validate_token(job.get("token"))
        self.script = validate_script(job.get("script"))
        self._options = option_args(job.get("options", {}))
        options = job.get("options") or {}
        self.dependency_ids = dependency_job_ids(options.get("dependency"))
        self.environment = validate_environment(job.get("environment") or {})
        self.tasks = validate_tasks(job.get("tasks"), self.environment, options)
        self.directory = ""

    def argv(self) -> List[str]:
        """sbatch's arguments: no script file, so sbatch reads the script from stdin.

        ``--export=ALL`` always, so the job's environment is sbatch's (``env``) whether or not the
        job has variables: explicit, and the same as Slurm's default.
        """
        return ["sbatch", "--parsable", "--ignore-pbs", "--export=ALL",
                "--comment=" + self.token, *self._options]  # fmt: skip

    @property
    def user(self) -> str:
        """The name of the job's user ('' before ``run_as`` is set)."""
        return self.run_as.name if self.run_as is not None else ""

    def stdin(self) -> bytes:
        return self.script

    def env(self, base: Mapping[str, str]) -> Dict[str, str]:
        """sbatch's process environment: the clean base plus the job's variables."""
        env = dict(base)
        env.update(self.environment)
        return env

    def parse(self, returncode: int, stdout: str, stderr: str) -> str:
        """The new job id (``jobid`` or ``jobid;cluster``), or raise a classified ``AgentError``.

        Success without a job id is transient: the job may exist; a retry finds it by its token.
        """
        if returncode != 0:
            raise classify_sbatch_failure(returncode, stderr)
        lines = [line.strip() for line in stdout.splitlines() if line.strip()]
        if lines and _JOB_ID.fullmatch(lines[-1].split(";", 1)[0].strip()):
            return lines[-1].split(";", 1)[0].strip()
        raise AgentError(
            SBATCH_BAD_OUTPUT,
            "sbatch succeeded but printed no job id: %r" % stdout[:200],
            transient=True,
        )


# ---- sweeps: one job array for many jobs that differ only by their environment ------------------

MAX_ARRAY_TASKS = 10000
#: Each task's variables wait in ``~/.hpcb/arrays/<token>/<position>.env`` (the user's files,
#: written as the user), read by the task's constant wrapper; directories older than this go.
ARRAY_FILES_DAYS = 30
ARRAYS_DIR = ".hpcb/arrays"
ARRAYS_DISABLED = "ARRAYS_DISABLED"


def validate_tasks(tasks: Any, common: Dict[str, str], options: Dict[str, Any]) -> Any:
    """A sweep's per-position task variables (None: not a sweep; a None position: no task)."""
    if tasks is None:
        return None
    if not isinstance(tasks, list) or not 0 < len(tasks) <= MAX_ARRAY_TASKS:
        raise AgentError(INVALID_JOB, "tasks must be a list of 1 to %d items" % MAX_ARRAY_TASKS)
    if "array" in options:
        raise AgentError(INVALID_JOB, "a sweep cannot also set the array option")
    checked = []  # type: List[Optional[Dict[str, str]]]
    for task in tasks:
        env = None if task is None else validate_environment(task)
        if env is not None and len(set(env) | set(common)) > MAX_ENV_VARS:
            raise AgentError(INVALID_JOB, "more than %d variables in a task" % MAX_ENV_VARS)
        checked.append(env)
    if all(task is None for task in checked):
        raise AgentError(INVALID_JOB, "a sweep needs at least one task")
    return checked


def array_ranges(ids: List[int]) -> str:
    """``--array``'s index list for sorted ``ids``: ``[0, 1, 2, 5]`` -> ``0-2,5``."""
    runs = []  # type: List[List[int]]
    for task in ids:
        if runs and task == runs[-1][1] + 1:
            runs[-1][1] = task
        else:
            runs.append([task, task])
    return ",".join(str(a) if a == b else "%d-%d" % (a, b) for a, b in runs)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


ARRAY_WRAPPER = """#!/bin/bash
# hpc-broker sweep task: its variables by SLURM_ARRAY_TASK_ID, then the sweep's script
d=%s
while IFS= read -r -d '' v; do export "$v"; done < "$d/$((SLURM_ARRAY_TASK_ID + %d)).env" || exit 97
exec "$d/script"
"""

WRITE_CODE = """
import json, os, shutil, sys, time
d, days = sys.argv[1], int(sys.argv[2])
doc = json.load(sys.stdin)
os.makedirs(d, 0o700, exist_ok=True)
def put(name, text, mode):
    tmp = os.path.join(d, "." + name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(text.encode("utf-8"))
    os.replace(tmp, os.path.join(d, name))
put("script", doc["script"], 0o700)
for position, text in doc["tasks"].items():
    put(position + ".env", text, 0o600)
parent = os.path.dirname(d)
for name in os.listdir(parent):
    path = os.path.join(parent, name)
    try:
        if time.time() - os.lstat(path).st_mtime > days * 86400:
            shutil.rmtree(path)
    except OSError:
        pass
"""


class StageTasksCommand(SlurmCommand[None]):
    """Writes a sweep's script and per-task variables, as its user, under the user's home."""

    timeout = QUERY_TIMEOUT_SECONDS

    def __init__(self, command: "SbatchCommand", directory: str) -> None:
        self.run_as = command.run_as
        self.directory = directory
        tasks = {
            str(p): "".join("%s=%s\0" % item for item in sorted(env.items()))
            for p, env in enumerate(command.tasks)
            if env is not None
        }
        script = command.script.decode("utf-8")
        self.data = json.dumps({"script": script, "tasks": tasks}).encode("utf-8")

    def argv(self) -> List[str]:
        return ["python3", "-I", "-c", WRITE_CODE, self.directory, str(ARRAY_FILES_DAYS)]

    def stdin(self) -> bytes:
        return self.data

    def parse(self, returncode: int, stdout: str, stderr: str) -> None:
        if returncode != 0:
            raise AgentError(
                INVALID_JOB, "cannot write the sweep's task files: " + trim_message(stderr, 300)
            )


class MaxArraySizeCommand(SlurmCommand[int]):
    """The controller's ``MaxArraySize`` (task ids 0 to MaxArraySize-1), never assumed."""

    def argv(self) -> List[str]:
        return ["scontrol", "show", "config"]

    def parse(self, returncode: int, stdout: str, stderr: str) -> int:
        found = re.search(r"^MaxArraySize\s*=\s*([0-9]{1,9})\s*$", stdout, re.M)
        if returncode != 0 or found is None:
            raise self.unavailable(returncode, stderr or "no MaxArraySize in scontrol's answer")
        if int(found.group(1)) < 1:
            raise AgentError(ARRAYS_DISABLED, "job arrays are disabled here (MaxArraySize=0)")
        return int(found.group(1))


def split_sweep(command: "SbatchCommand", size: int) -> List[Tuple[int, "SbatchCommand"]]:
    """One ``sbatch --array`` per ``size`` positions of a sweep: (first position, command).

    Array ``k`` takes positions ``k*size`` to ``(k+1)*size - 1`` as task ids ``0`` to
    ``size - 1`` and its own token (the sweep's plus ``a<k>``), so a redelivery finds each
    array already submitted and submits only the missing ones.
    """
    home = command.run_as.home if command.run_as is not None else ""
    if not is_abs_path(home):
        raise AgentError(INVALID_JOB, "the user's home is not an absolute path")
    directory = "%s/%s/%s" % (home.rstrip("/"), ARRAYS_DIR, command.token.replace(":", "-"))
    parts = []  # type: List[Tuple[int, SbatchCommand]]
    for first in range(0, len(command.tasks), size):
        ids = [p - first for p in range(first, min(first + size, len(command.tasks)))
               if command.tasks[p] is not None]  # fmt: skip
        if not ids:
            continue
        part = SbatchCommand.__new__(SbatchCommand)
        part.__dict__.update(command.__dict__)
        part.token = "%sa%d" % (command.token, first // size)
        part.script = (ARRAY_WRAPPER % (_quote(directory), first)).encode("utf-8")
        part._options = [*command._options, "--array=" + array_ranges(ids)]
        part.tasks = None
        parts.append((first, part))
    command.directory = directory
    return parts


def dependency_job_ids(dependency: Optional[str]) -> List[str]:
    """The base Slurm ids a validated ``--dependency`` names (``afterok:12:13_2`` -> 12, 13)."""
    ids = []  # type: List[str]
    for condition in (dependency or "").split(","):
        for part in condition.split(":")[1:]:
            job_id = part.partition("_")[0]
            if job_id and job_id not in ids:
                ids.append(job_id)
    return ids


def foreign_dependency(
    command: "SbatchCommand", owners: Dict[str, Tuple[str, str]]
) -> Optional[AgentError]:
    """Why ``command`` may not depend on what it names: a job slurmctld holds for another user.

    Slurm lets any user depend on anyone's job id, which would let a caller watch, or wait on,
    another user's jobs. An id slurmctld does not hold is left to sbatch, which refuses it.
    """
    foreign = [job_id for job_id in command.dependency_ids
               if job_id in owners and owners[job_id][0] != command.user]  # fmt: skip
    if not foreign:
        return None
    return AgentError(
        DEPENDENCY_NOT_FOUND,
        "dependency on Slurm job %s: not a job of %s" % (foreign[0], command.user),
    )


# ---- finding tokens already in Slurm ------------------------------------------------------------

_BASE_JOB_ID = re.compile(r"^(\d+)")


def base_job_id(raw: str) -> Optional[str]:
    """``123``, ``123_4``, ``123_[1-5]``, ``123+0``, ``123.batch`` -> ``123``; junk -> None."""
    found = _BASE_JOB_ID.match(raw.strip())
    return found.group(1) if found else None


def parse_token_lines(text: str, user: Optional[str] = None) -> Dict[str, str]:
    """Map token -> job id from ``jobid|user|comment`` lines (squeue or sacct output).

    Only comments that are well-formed tokens count; a comment may itself contain '|' (it is
    the last field), other users' jobs are skipped when ``user`` is given (another user cannot
    make the broker believe a job exists by copying a token into their own job's comment), and
    when a token appears on several jobs the lowest (first submitted) id wins.
    """
    found = {}  # type: Dict[str, str]
    for line in text.splitlines():
        parts = line.split("|", 2)
        if len(parts) != 3:
            continue
        job_id = base_job_id(parts[0])
        comment = parts[2].strip()
        if job_id is None or not _TOKEN.fullmatch(comment):
            continue
        if user is not None and parts[1].strip() != user:
            continue
        if comment not in found or int(job_id) < int(found[comment]):
            found[comment] = job_id
    return found


SQUEUE_ARGV = ["squeue", "-h", "-a", "-t", "all", "-o", "%i|%u|%k"]
SACCT_ARGV = ["sacct", "-X", "-n", "-P", "-o", "jobid,user,comment", "-S", SACCT_WINDOW]


class SqueueTokensCommand(SlurmCommand[Dict[str, str]]):
    """Tokens of ``user``'s jobs slurmctld holds (``-u``, and each line's user checked again).

    Runs as the agent: a read-only query. Another user's job holding the same token is never
    ours: a redelivery as that token's own user submits its job instead of reusing the other.
    """

    def __init__(self, user: str) -> None:
        self.user = user

    def argv(self) -> List[str]:
        return [*SQUEUE_ARGV, "-u", self.user]

    def parse(self, returncode: int, stdout: str, stderr: str) -> Dict[str, str]:
        if returncode != 0:
            raise self.unavailable(returncode, stderr)
        return parse_token_lines(stdout, self.user)


class SacctTokensCommand(SqueueTokensCommand):
    """Tokens of the jobs accounting recorded in the last ``lookback`` seconds (None: a week)."""

    def __init__(self, user: str, lookback: Optional[int]) -> None:
        super().__init__(user)
        self.lookback = lookback

    def argv(self) -> List[str]:
        argv = list(SACCT_ARGV)
        if self.lookback is not None:
            argv[-1] = "now-%dseconds" % self.lookback
        return [*argv[:-2], "-u", self.user, *argv[-2:]]

    def parse(self, returncode: int, stdout: str, stderr: str) -> Dict[str, str]:
        if returncode != 0:
            raise SlurmError(SCHEDULER_UNAVAILABLE, trim_message(stderr, 200), transient=True)
        return parse_token_lines(stdout, self.user)


# ---- op status: squeue for what slurmctld holds, sacct for what it forgot ---------------------

#: squeue's ``exit_code`` is the raw wait status (768 = exit 3; 9 = killed by signal 9). Every
#: field ends with the ``|`` suffix; the reason comes last so that a '|' in it cannot shift fields.
SQUEUE_STATUS_FORMAT = (
    "JobArrayID:|,ArrayJobID:|,ArrayTaskID:|,State:|,exit_code:|,"
    "SubmitTime:|,StartTime:|,EndTime:|,Reason:|"
)
#: No ``-j``: squeue fails outright on one unknown id; ``-r``: one line per array task.
SQUEUE_STATUS_ARGV = ["squeue", "-h", "-a", "-r", "-t", "all", "-O", SQUEUE_STATUS_FORMAT]
#: Text, not ``--json`` (wrong exit codes in 22.05). With ``-j`` the window starts at the epoch.
SACCT_STATUS_ARGV = [
    "sacct",
    "-a",
    "-X",
    "-n",
    "-P",
    "-o",
    "jobid,state,exitcode,submit,start,end,reason",
]


#: States in which the job will not run again: only then is an exit code meaningful.
FINAL_STATES = frozenset(
    [
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    ]
)
_NO_VALUE = frozenset(["", "N/A", "NONE", "None", "Unknown", "(null)"])
_SACCT_JOB_ID = re.compile(r"^([0-9]{1,20})(?:_([0-9]{1,10}|\[[0-9,%:-]{1,1000}\]))?$")
_EXIT_CODE = re.compile(r"^([0-9]{1,3}):([0-9]{1,3})$")
_RAW_STATUS = re.compile(r"^[0-9]{1,10}$")
_RANGE = re.compile(r"^[0-9][0-9,%:-]*$")


def normalize_state(text: str) -> str:
    """``CANCELLED by 0`` -> ``CANCELLED``; ``running`` -> ``RUNNING``; empty -> ``UNKNOWN``."""
    words = text.split()
    return words[0].rstrip("+").upper() if words else "UNKNOWN"


def _value(text: str) -> Optional[str]:
    text = text.strip()
    return None if text in _NO_VALUE else text


def _status(
    base: str,
    task: Optional[str],
    state: str,
    *,
    exit_signal: Optional[Tuple[int, int]],
    times: List[str],
    reason: str,
    source: str,
) -> Dict[str, Any]:
    """One ``SlurmJobStatus`` document, without the fields that have no value (compact)."""
    found = {
        "job_id": base if task is None else base + "_" + task,
        "base_id": base,
        "array_task": task,
        "state": state,
        "reason": _value(reason),
        "exit_code": exit_signal[0] if exit_signal else None,
        "signal": exit_signal[1] if exit_signal else None,
        "submit_time": _value(times[0]),
        "start_time": _value(times[1]),
        "end_time": _value(times[2]),
        "source": source,
    }
    return {key: value for key, value in found.items() if value is not None}


def parse_squeue_status(text: str) -> List[Dict[str, Any]]:
    """Statuses from ``SQUEUE_STATUS_ARGV`` output (one per job or array task).

    A pending array squeue did not expand comes back as one status with a task like ``[5-10]``.
    """
    statuses = []
    for line in text.splitlines():
        parts = line.split("|", 8)
        if len(parts) != 9 or not _JOB_ID.fullmatch(parts[1].strip()):
            continue
        task = _value(parts[2])
        if task is not None and not _DIGITS.fullmatch(task):
            if not _RANGE.fullmatch(task):
                continue
            task = "[" + task + "]"
        state = normalize_state(parts[3])
        raw = parts[4].strip()
        exit_signal = None
        if state in FINAL_STATES and _RAW_STATUS.fullmatch(raw):
            exit_signal = ((int(raw) >> 8) & 0xFF, int(raw) & 0x7F)
        reason = parts[8][:-1] if parts[8].endswith("|") else parts[8]
        statuses.append(
            _status(
                parts[1].strip(),
                task,
                state,
                exit_signal=exit_signal,
                times=parts[5:8],
                reason=reason,
                source="squeue",
            )
        )
    return statuses


def parse_sacct_status(text: str) -> List[Dict[str, Any]]:
    """Statuses from ``SACCT_STATUS_ARGV`` output; a job listed twice (requeued) keeps its last."""
    found = {}  # type: Dict[str, Dict[str, Any]]
    for line in text.splitlines():
        parts = line.split("|", 6)
        matched = _SACCT_JOB_ID.fullmatch(parts[0].strip()) if len(parts) == 7 else None
        if matched is None:  # also skips het components (123+0) and steps (123.batch)
            continue
        state = normalize_state(parts[1])
        code = _EXIT_CODE.fullmatch(parts[2].strip())
        exit_signal = None
        if state in FINAL_STATES and code is not None:
            exit_signal = (int(code.group(1)), int(code.group(2)))
        status = _status(
            matched.group(1),
            matched.group(2),
            state,
            exit_signal=exit_signal,
            times=parts[3:6],
            reason=parts[6],
            source="sacct",
        )
        found.pop(status["job_id"], None)
        found[status["job_id"]] = status
    return list(found.values())


def merge_statuses(
    wanted: List[str], live: List[Dict[str, Any]], accounted: List[Dict[str, Any]]
) -> Tuple[List[Dict[str, Any]], List[str]]:
    """The statuses of the wanted ids (base ids, or array tasks) and the ids nobody knows.

    squeue wins: slurmctld's record is the freshest and carries the exit code. sacct adds what
    squeue no longer lists (jobs and array tasks older than ``MinJobAge``), except its pending
    ranges of arrays squeue still lists (squeue ``-r`` showed those tasks one by one).
    """
    bases = {job_id for job_id in wanted if "_" not in job_id}
    tasks = {job_id for job_id in wanted if "_" in job_id}
    merged = {status["job_id"]: status for status in live}
    live_bases = {status["base_id"] for status in live}
    for status in accounted:
        stale_range = status["base_id"] in live_bases and "[" in status.get("array_task", "")
        if status["job_id"] not in merged and not stale_range:
            merged[status["job_id"]] = status
    statuses = [s for s in merged.values() if s["base_id"] in bases or s["job_id"] in tasks]
    statuses.sort(key=_status_order)
    known = {s["base_id"] for s in statuses} | {s["job_id"] for s in statuses}
    return statuses, [job_id for job_id in wanted if job_id not in known]


def _status_order(status: Dict[str, Any]) -> Tuple[int, int, str]:
    task = status.get("array_task", "")
    return (int(status["base_id"]), int(task) if task.isdigit() else -1, task)


class SqueueStatusCommand(SlurmCommand[List[Dict[str, Any]]]):
    """Every job and array task slurmctld holds (``parse_squeue_status``)."""

    def argv(self) -> List[str]:
        return list(SQUEUE_STATUS_ARGV)

    def parse(self, returncode: int, stdout: str, stderr: str) -> List[Dict[str, Any]]:
        if returncode != 0:
            raise self.unavailable(returncode, stderr)
        return parse_squeue_status(stdout)


class SacctStatusCommand(SlurmCommand[List[Dict[str, Any]]]):
    """What accounting recorded about some base ids (``parse_sacct_status``)."""

    def __init__(self, base_ids: List[str]) -> None:
        self.base_ids = base_ids

    def argv(self) -> List[str]:
        return [*SACCT_STATUS_ARGV, "-j", ",".join(self.base_ids)]

    def parse(self, returncode: int, stdout: str, stderr: str) -> List[Dict[str, Any]]:
        if returncode != 0:
            raise self.unavailable(returncode, stderr, 200)
        return parse_sacct_status(stdout)


# ---- op cancel ----------------------------------------------------------------------------------

#: ``-v``: without it, scancel 22.05 says nothing (and exits 0) for finished or unknown jobs.
SCANCEL_ARGV = ["scancel", "-v"]
_SCANCEL_JOB_ERROR = re.compile(r"error: Kill job error on job id ([0-9_]+): (.*)$")


def classify_cancel_error(message: str) -> AgentError:
    """scancel's complaint about one job -> a permanent or transient error."""
    lowered = message.lower()
    if "already completing or completed" in lowered:
        return AgentError(JOB_ALREADY_FINISHED, message)
    if "invalid job id" in lowered:
        return AgentError(JOB_NOT_FOUND, message)
    for fragment in TRANSIENT_SBATCH_ERRORS:
        if fragment in lowered:
            return AgentError(SCHEDULER_UNAVAILABLE, message, transient=True)
    return AgentError(SCHEDULER_REJECTED, message)


def parse_job_owners(text: str) -> Dict[str, Tuple[str, str]]:
    """Base job id -> (user, comment) from ``jobid|user|comment`` lines (``SQUEUE_ARGV``)."""
    owners = {}  # type: Dict[str, Tuple[str, str]]
    for line in text.splitlines():
        parts = line.split("|", 2)
        job_id = base_job_id(parts[0]) if len(parts) == 3 else None
        if job_id is not None:
            owners[job_id] = (parts[1].strip(), parts[2].strip())
    return owners


class JobOwnersCommand(SlurmCommand[Dict[str, Tuple[str, str]]]):
    """Whose job each id slurmctld holds is, and its comment: checked before a cancel."""

    def argv(self) -> List[str]:
        return list(SQUEUE_ARGV)

    def parse(self, returncode: int, stdout: str, stderr: str) -> Dict[str, Tuple[str, str]]:
        if returncode != 0:
            raise self.unavailable(returncode, stderr)
        return parse_job_owners(stdout)


_SWEEP_TOKEN = re.compile(r"^hpcb:r[0-9a-f]{28}c[0-9]{1,6}$")


def token_matches(comment: str, token: str) -> bool:
    """Whether a job's comment is ``token``: the same, or, for a sweep chunk's token
    (``hpcb:<batch>c<n>``), the comment of one of its arrays (``<token>a<k>``)."""
    if comment == token:
        return True
    tail = comment[len(token) + 1 :] if comment.startswith(token + "a") else ""
    return bool(_SWEEP_TOKEN.fullmatch(token) and _DIGITS.fullmatch(tail))


def check_owner(
    job_id: str, user: str, token: str, owner: Optional[Tuple[str, str]]
) -> Optional[AgentError]:
    """Why the agent must not touch ``job_id`` on behalf of ``user`` (None: it is theirs).

    ``owner`` is Slurm's (user, comment) of the job; None when Slurm does not hold it.
    """
    if owner is None:
        return AgentError(JOB_NOT_FOUND, "Slurm holds no job %s" % job_id)
    if owner[0] != user or not token_matches(owner[1], token):
        return AgentError(
            JOB_MISMATCH,
            "Slurm job %s is not %s's job %s: refusing to touch it" % (job_id, user, token),
        )
    return None


class ScancelCommand(SlurmCommand[List[Tuple[str, Optional[AgentError]]]]):
    """One scancel for every id; each id comes back with its error (None: cancelled, or being
    cancelled). scancel reports per job (``Kill job error on job id 12: ...``); anything else it
    says when it fails applies to every job it did not mention. ``run_as``: the jobs' user
    (Slurm itself then refuses anyone else's job).
    """

    def __init__(self, job_ids: List[str], run_as: Optional[RunAs] = None) -> None:
        self.job_ids = job_ids
        self.run_as = run_as

    def argv(self) -> List[str]:
        return SCANCEL_ARGV + self.job_ids

    def parse(
        self, returncode: int, stdout: str, stderr: str
    ) -> List[Tuple[str, Optional[AgentError]]]:
        errors = {}  # type: Dict[str, AgentError]
        other = []  # type: List[str]
        for line in stderr.splitlines():
            matched = _SCANCEL_JOB_ERROR.search(line)
            if matched:
                errors[matched.group(1)] = classify_cancel_error(trim_message(line))
            elif "error" in line.lower():
                other.append(line)
        general = None  # type: Optional[AgentError]
        if returncode != 0:
            general = classify_cancel_error(
                trim_message("\n".join(other)) or "scancel exited with status %d" % returncode
            )
        return [(job_id, errors.get(job_id, general)) for job_id in self.job_ids]


# ---- op output: what Slurm remembers of a job (its file paths, or the values of its patterns) ---

#: Slurm prints this task id for jobs that are not arrays (NO_VAL), and uses it in file names.
NO_TASK = "4294967294"
_SCONTROL_KEY = re.compile(r"(?:^|(?<=\s))([A-Za-z][A-Za-z0-9_:/]*)=")
SACCT_OUTPUT_ARGV = [
    "sacct",
    "-a",
    "-X",
    "-n",
    "-P",
    "-o",
    "jobidraw,jobname,user,nodelist,comment",
]


def parse_scontrol_job(text: str, job_id: str) -> Optional[Dict[str, str]]:
    """The record of ``job_id`` (``12`` or ``12_3``) in ``scontrol -o show job`` output.

    Values run to the next `` Key=``; a path containing `` word=`` would be cut there.
    """
    base, _, task = job_id.partition("_")
    for line in text.splitlines():
        keys = list(_SCONTROL_KEY.finditer(line))
        record = {}  # type: Dict[str, str]
        for index, key in enumerate(keys):
            end = keys[index + 1].start() if index + 1 < len(keys) else len(line)
            record[key.group(1)] = line[key.end() : end].strip()
        if task:
            if record.get("ArrayJobId") == base and record.get("ArrayTaskId") == task:
                return record
        elif record.get("JobId") == base:
            return record
    return None


def first_node(nodelist: str) -> Optional[str]:
    """``vm`` -> ``vm``; ``q1-dy-c5-[3-5,9]`` -> ``q1-dy-c5-3``; ``None assigned`` -> None."""
    matched = re.match(r"^([A-Za-z0-9._-]+)(?:\[([0-9]+))?", nodelist.strip())
    if matched is None or nodelist.strip().startswith("None"):
        return None
    return matched.group(1) + (matched.group(2) or "")


def _scontrol_values(record: Dict[str, str]) -> Dict[str, str]:
    """Pattern values from a ``scontrol show job`` record (``UserId=alice(1001)`` -> alice)."""
    values = {
        "j": record.get("JobId", ""),
        "J": record.get("JobId", ""),
        "A": record.get("ArrayJobId", ""),
        "x": record.get("JobName", ""),
        "u": record.get("UserId", "").split("(", 1)[0],
        "N": record.get("BatchHost", ""),
    }
    if _DIGITS.fullmatch(record.get("ArrayTaskId", "")):
        values["a"] = record["ArrayTaskId"]
    return {key: value for key, value in values.items() if value and value != "(null)"}


class ScontrolJobCommand(SlurmCommand[Optional[Dict[str, str]]]):
    """The job's ``scontrol -o show job`` record; None once slurmctld has forgotten it."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id

    def argv(self) -> List[str]:
        return ["scontrol", "-o", "show", "job", self.job_id]

    def parse(self, returncode: int, stdout: str, stderr: str) -> Optional[Dict[str, str]]:
        if returncode == 0:
            return parse_scontrol_job(stdout, self.job_id)
        if "invalid job id" in stderr.lower():
            return None
        raise self.unavailable(returncode, stderr)


class SacctJobCommand(SlurmCommand[Dict[str, str]]):
    """Pattern values from accounting (raw job id, name, user, first node), if it has them.

    Only a record of ``user`` whose comment is ``token`` counts (an empty comment too: clusters
    without ``AccountingStoreFlags=job_comment``); records of the id that are all someone
    else's are JOB_MISMATCH (the id was reused).
    """

    def __init__(self, job_id: str, user: str, token: str) -> None:
        self.job_id = job_id
        self.user = user
        self.token = token

    def argv(self) -> List[str]:
        return [*SACCT_OUTPUT_ARGV, "-j", self.job_id]

    def parse(self, returncode: int, stdout: str, stderr: str) -> Dict[str, str]:
        lines = [line.split("|", 4) for line in stdout.splitlines() if line.count("|") >= 4]
        lines = [line for line in lines if _JOB_ID.fullmatch(line[0])]
        if returncode != 0 or not lines:
            return {}
        ours = [line for line in lines if line[2] == self.user]
        mine = [line for line in ours if not line[4] or token_matches(line[4], self.token)]
        if not mine:
            raise AgentError(
                JOB_MISMATCH,
                "Slurm job %s is not %s's job %s: refusing to read it"
                % (self.job_id, self.user, self.token),
            )
        raw, name, user, nodes, _ = mine[-1]
        values = {"j": raw, "J": raw, "x": name, "u": user}
        node = first_node(nodes)
        if node:
            values["N"] = node
        return {key: value for key, value in values.items() if value}


# ==== 3. output files: Slurm's file name patterns, reading a chunk ===============================


#: ``%[width]<letter>``; slurmd caps the zero-padding width at 10.
_FILE_PATTERN = re.compile(r"%([0-9]{0,9})([%AaJjNnstux])")


def expand_file_pattern(pattern: str, values: Mapping[str, str]) -> str:
    """Expand Slurm filename pattern symbols as slurmd does.

    ``values`` maps symbol letters (``j A a x u N ...``) to text; unknown symbols stay as they
    are; a backslash anywhere turns expansion off (and the backslashes are dropped).
    """
    if "\\" in pattern:
        return pattern.replace("\\", "")

    def one(symbol: "re.Match[str]") -> str:
        width, letter = symbol.group(1), symbol.group(2)
        if letter == "%":
            return "%" if not width else symbol.group(0)
        value = values.get(letter)
        if value is None:
            return symbol.group(0)
        return value.zfill(min(int(width), 10)) if width and value.isdigit() else value

    return _FILE_PATTERN.sub(one, pattern)


def _utf8_start(data: bytes) -> int:
    """Bytes to skip so that ``data`` does not start inside a UTF-8 character (at most 3)."""
    skip = 0
    while skip < min(3, len(data)) and data[skip] & 0xC0 == 0x80:
        skip += 1
    return skip


def _utf8_end(data: bytes) -> int:
    """Length of ``data`` without a UTF-8 character cut off at its end."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # the last lead byte (or ASCII)
            need = 1
            if byte >> 5 == 0b110:
                need = 2
            elif byte >> 4 == 0b1110:
                need = 3
            elif byte >> 3 == 0b11110:
                need = 4
            return len(data) - back if need > back and back < len(data) else len(data)
    return len(data)


#: The one program that opens an output file: run as the job's user (``RunAs.prefix``), never in
#: the agent's root process, as ``python3 -I -c READ_CODE PATH OFFSET LENGTH`` (OFFSET -1: the
#: tail). It refuses to follow a symbolic link as the last component (O_NOFOLLOW; the kernel
#: checks every other component against the user's rights), anything but a regular file (a FIFO
#: would block, a device never end) and a file its user does not own; it prints one JSON line:
#: ``{size, start, data (base64)}``, ``{errno, error}`` or ``{refused}``. Python 3.7+, stdlib only.
READ_CODE = """
import base64, json, os, stat, sys
def read(path, offset, limit):
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        return {"errno": exc.errno, "error": exc.strerror}
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return {"refused": "not a regular file"}
        if info.st_uid != os.getuid():
            return {"refused": "not a file of the job's user"}
        start = max(0, info.st_size - limit) if offset < 0 else offset
        data = b""
        while len(data) < limit:
            piece = os.pread(fd, limit - len(data), start + len(data))
            if not piece:
                break
            data += piece
        size = max(info.st_size, os.fstat(fd).st_size)
        return {"size": size, "start": start, "data": base64.b64encode(data).decode("ascii")}
    finally:
        os.close(fd)
print(json.dumps(read(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
"""


def read_chunk(
    path: str,
    offset: Optional[int],
    max_bytes: int,
    *,
    run_as: Optional[RunAs] = None,
    run: Optional["Runner"] = None,
    base: Optional[Mapping[str, str]] = None,
) -> Dict[str, Any]:
    """Up to ``max_bytes`` of a regular file of ``run_as``, from ``offset`` (None: the tail).

    The file is read by ``READ_CODE`` in a child process started as ``run_as`` (without it: as
    this process's user; only tests do that). A chunk that stops before the end of the file does
    not end inside a UTF-8 character, nor does a tail start inside one, so consecutive chunks
    decode to exactly the file's text.

    Raises:
        OSError: the file cannot be opened (ENOENT when it does not exist).
        AgentError: OUTPUT_UNREADABLE for a path that is not a regular file of the user, or
            when the reader cannot run (transient if it timed out).
    """
    if not path.startswith("/"):
        raise AgentError(OUTPUT_UNREADABLE, "refusing a relative output path")
    argv = ["python3", "-I", "-c", READ_CODE, path, str(-1 if offset is None else offset)]
    argv.append(str(max_bytes))
    env = {"PATH": user_path(os.environ.get("PATH", ""))}
    if run_as is not None:
        argv, env = run_as.prefix() + argv, run_as.environment(base or {})
    try:
        code, out, err = (run or run_process)(argv, None, QUERY_TIMEOUT_SECONDS, env)
    except subprocess.TimeoutExpired as exc:
        raise AgentError(OUTPUT_UNREADABLE, "reading %s timed out" % path, True) from exc
    except FileNotFoundError as exc:
        raise AgentError(OUTPUT_UNREADABLE, "cannot start the reader: %s" % exc) from exc
    try:
        answer = json.loads(out.strip().splitlines()[-1])
        if "errno" in answer:
            raise OSError(int(answer["errno"]), str(answer["error"]))
        if "refused" in answer:
            raise AgentError(OUTPUT_UNREADABLE, "%s: %s" % (path, answer["refused"]))
        size, start = int(answer["size"]), int(answer["start"])
        data = base64.b64decode(answer["data"])
    except (ValueError, IndexError, KeyError, TypeError, binascii.Error) as exc:
        message = trim_message(err, 200) or "exit status %d" % code
        raise AgentError(
            OUTPUT_UNREADABLE, "the reader of %s failed: %s" % (path, message)
        ) from exc
    if offset is None and start > 0:
        skip = _utf8_start(data)
        start, data = start + skip, data[skip:]
    if start + len(data) < size:
        data = data[: _utf8_end(data)]
    return {
        "path": path,
        "size": size,
        "offset": start,
        "length": len(data),
        "data": data.decode("utf-8", "replace"),
        "eof": start + len(data) >= size,
    }


# ==== 4. effects: processes and HTTP (injected, so tests replace them) ===========================


RunResult = Tuple[int, str, str]
#: ``(argv, stdin bytes, timeout, environment) -> (returncode, stdout, stderr)``.
Runner = Callable[[List[str], Optional[bytes], float, Dict[str, str]], RunResult]


def resolve_executable(name: str) -> str:
    """Path of a Slurm client: PATH first, then ParallelCluster's /opt/slurm/bin."""
    found = shutil.which(name)
    if found:
        return found
    fallback = os.path.join(FALLBACK_SLURM_BIN, name)
    if os.path.isfile(fallback) and os.access(fallback, os.X_OK):
        return fallback
    raise FileNotFoundError(errno.ENOENT, "command not found", name)


def run_process(
    argv: List[str], stdin: Optional[bytes], timeout: float, env: Dict[str, str]
) -> RunResult:
    """Run an argv (never through a shell) with exactly ``env`` as its environment.

    FileNotFoundError or TimeoutExpired propagate.
    """
    executable = resolve_executable(argv[0])
    completed = subprocess.run(
        [executable, *argv[1:]],
        input=stdin if stdin is not None else b"",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        shell=False,
        timeout=timeout,
        check=False,
        env=env,
        pass_fds=tuple(HELD_LOCK_FDS),
    )
    return (
        completed.returncode,
        completed.stdout.decode("utf-8", "replace"),
        completed.stderr.decode("utf-8", "replace"),
    )


def http_get(url: str) -> bytes:
    """Download a staged request (a presigned S3 GET URL)."""
    import urllib.request  # noqa: PLC0415 - see LAZY_IMPORTS

    # Only http(s): _check_url refuses file:// and other schemes urllib would open.
    request = urllib.request.Request(_check_url(url), method="GET")  # noqa: S310
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as answer:  # noqa: S310
        data = answer.read(MAX_FETCH_BYTES + 1)  # type: bytes
    if len(data) > MAX_FETCH_BYTES:
        raise AgentError(FETCH_FAILED, "staged request larger than %d bytes" % MAX_FETCH_BYTES)
    return data


def http_put(url: str, body: bytes) -> None:
    """Upload a large answer (a presigned S3 PUT URL signed for Content-Type application/json)."""
    import urllib.request  # noqa: PLC0415 - see LAZY_IMPORTS

    request = urllib.request.Request(  # noqa: S310 - http(s) only, see _check_url
        _check_url(url), data=body, method="PUT", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as answer:  # noqa: S310
        answer.read()


# ==== 5. locking =================================================================================


#: Descriptors of the locks this agent holds. Every Slurm client it starts inherits them: if the
#: agent dies (killed by a runner timeout, or its SSM command cancelled) while an sbatch is in
#: flight, the lock stays held until that sbatch exits, so the next agent cannot list the tokens
#: before the orphaned submission has landed (and submit it a second time).
HELD_LOCK_FDS = []  # type: List[int]


class FileLock(object):
    """An exclusive ``flock`` on a file, waited for up to ``wait_seconds`` (then AGENT_BUSY).

    While held, its descriptor is in ``HELD_LOCK_FDS`` (inherited by the clients the agent runs).
    """

    def __init__(self, path: str, wait_seconds: float = LOCK_WAIT_SECONDS) -> None:
        self.path = path
        self.wait_seconds = wait_seconds
        self._fd = -1

    def __enter__(self) -> "FileLock":
        # O_NOFOLLOW: the default lives in world-writable /var/tmp and the agent runs as root.
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        try:
            self._fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise AgentError(
                AGENT_BUSY, "cannot open lock file %s: %s" % (self.path, exc), transient=True
            ) from exc
        deadline = time.monotonic() + self.wait_seconds
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                HELD_LOCK_FDS.append(self._fd)
                return self
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                if time.monotonic() >= deadline:
                    os.close(self._fd)
                    raise AgentError(
                        AGENT_BUSY,
                        "another agent call held %s for %.0f s" % (self.path, self.wait_seconds),
                        transient=True,
                    ) from exc
                time.sleep(0.05)

    def __exit__(self, *exc_info: Any) -> None:
        HELD_LOCK_FDS.remove(self._fd)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


# ==== 6. operations: ping, submit, status, cancel, output, fetch =================================


class Agent(object):
    """Handles one request. Effects are injected so that tests run without Slurm or network.

    Args:
        run: runs an argv (``run_process``): ``(argv, stdin, timeout, env) -> (rc, out, err)``.
        get: downloads a URL (``http_get``).
        put: uploads bytes to a URL (``http_put``).
        lock_path: the lock file serializing check-and-submit.
        lock_wait: seconds to wait for that lock.
        lookup_user: ``passwd`` lookup by name (``pwd.getpwnam``), for ``resolve_user``.
        environ: the agent's environment, source of ``base_environment`` (default os.environ).
        hostname: ``%N`` in output file patterns when Slurm cannot say (default: this host).
    """

    def __init__(
        self,
        *,
        run: Runner = run_process,
        get: Callable[[str], bytes] = http_get,
        put: Callable[[str, bytes], None] = http_put,
        lock_path: str = DEFAULT_LOCK_PATH,
        lock_wait: float = LOCK_WAIT_SECONDS,
        lookup_user: UserLookup = pwd.getpwnam,
        environ: Optional[Mapping[str, str]] = None,
        hostname: Optional[str] = None,
    ) -> None:
        self.run = run
        self.get = get
        self.put = put
        self.lock_path = lock_path
        self.lock_wait = lock_wait
        self.lookup_user = lookup_user
        self.base_env = base_environment(os.environ if environ is None else environ)
        self.hostname = hostname or socket.gethostname().split(".")[0]

    # -- entry points ------------------------------------------------------------------------

    def answer(self, payload: str) -> str:
        """The one JSON line to print for a base64 payload (never raises ``AgentError``)."""
        op = ""
        try:
            request = decode_payload(payload)
            op = str(request.get("op", ""))[:32]
            staging = request
            if request.get("op") == "fetch":
                inner = self.fetch(request)
                staging = effective_request(request, inner)
                request = inner
                op = str(request.get("op", ""))[:32]
            validate_staging(staging)
            response = self.handle(request)
            return self.stage_if_large(staging, response)
        except AgentError as exc:
            return dumps(error_response(op, exc))

    def handle(self, request: Dict[str, Any]) -> Dict[str, Any]:
        """Process a decoded (and, for ``fetch``, already downloaded) request."""
        if request.get("v", PROTOCOL_VERSION) != PROTOCOL_VERSION:
            raise AgentError(UNSUPPORTED_VERSION, "protocol version %r" % (request.get("v"),))
        op = request.get("op")
        if op == "ping":
            return self.ping()
        min_uid = request.get("min_uid")
        if op == "submit":
            return self.submit(
                request.get("jobs", []),
                request.get("concurrency"),
                request.get("lookback_seconds"),
                min_uid,
                request.get("find_only") is True,
            )
        if op == "status":
            return self.status(request.get("job_ids", []))
        if op == "cancel":
            return self.cancel(request.get("targets"), min_uid)
        if op == "output":
            return self.output(request.get("output"), min_uid)
        if op == "fetch":
            raise AgentError(BAD_REQUEST, "a fetched request cannot be another fetch")
        raise AgentError(BAD_REQUEST, "unknown op %r" % (str(op)[:32],))

    # -- ops ---------------------------------------------------------------------------------

    def ping(self) -> Dict[str, Any]:
        try:
            sbatch = self.execute(SbatchVersionCommand())
        except AgentError as exc:
            sbatch = "not found" if exc.code == SLURM_NOT_FOUND else "timed out"
        info = {
            "agent_version": AGENT_VERSION,
            "python": platform.python_version(),
            "sbatch": sbatch,
            "hostname": socket.gethostname(),
        }
        return {"v": PROTOCOL_VERSION, "ok": True, "op": "ping", "info": info}

    def fetch(self, request: Dict[str, Any]) -> Dict[str, Any]:
        """Download the real request of a ``fetch`` from its presigned ``payload_url``."""
        if request.get("v", PROTOCOL_VERSION) != PROTOCOL_VERSION:
            raise AgentError(UNSUPPORTED_VERSION, "protocol version %r" % (request.get("v"),))
        import http.client  # noqa: PLC0415 - see LAZY_IMPORTS

        url = _check_url(request.get("payload_url"))
        digest = request.get("payload_sha256")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise AgentError(BAD_REQUEST, "payload_sha256 must be 64 lowercase hex digits")
        try:
            data = self.get(url)
        except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
            raise AgentError(
                FETCH_FAILED, "cannot download the staged request: %s" % exc, transient=True
            ) from exc
        # The command (sent by the worker) carries the digest: a staged object changed by anyone
        # able to write the bucket is refused, never run.
        if hashlib.sha256(data).hexdigest() != digest:
            raise AgentError(BAD_PAYLOAD, "the staged request does not match its sha256")
        try:
            inner = json.loads(data.decode("utf-8"), parse_int=parse_int)
        except (ValueError, UnicodeError) as exc:
            raise AgentError(BAD_PAYLOAD, "the staged request is not JSON: %s" % exc) from exc
        if not isinstance(inner, dict):
            raise AgentError(BAD_PAYLOAD, "the staged request must be a JSON object")
        return inner

    def submit(
        self,
        jobs: Any,
        concurrency: Any = None,
        lookback: Any = None,
        min_uid: Any = None,
        find_only: bool = False,
    ) -> Dict[str, Any]:
        """sbatch each job as its own user, unless its token is already one of that user's jobs.

        Each job is validated, its user included (``resolve_user``), before any Slurm call.
        ``find_only``: the same token search under the same lock, and no sbatch: a job not
        found answers NOT_SUBMITTED (the broker's last word on a chunk whose retries ran out).
        """
        if not isinstance(jobs, list):
            raise AgentError(BAD_REQUEST, "jobs must be a list")
        lowest_uid = validate_min_uid(min_uid)
        if lookback is not None:
            _bounded_int(lookback, "lookback_seconds", MIN_LOOKBACK_SECONDS, MAX_LOOKBACK_SECONDS)
        if concurrency is None:
            concurrency = DEFAULT_SUBMIT_CONCURRENCY
        _bounded_int(concurrency, "concurrency", 1, MAX_SUBMIT_CONCURRENCY)
        results = []  # type: List[Dict[str, Any]]
        commands = []  # type: List[Tuple[int, SbatchCommand]]
        for job in jobs:
            try:
                command = SbatchCommand(job)
                command.run_as = resolve_user(job.get("user"), lowest_uid, self.lookup_user)
                commands.append((len(results), command))
                results.append({})
            except AgentError as exc:
                token = job.get("token") if isinstance(job, dict) else None
                results.append({"token": token if isinstance(token, str) else "", "error": exc})
        if not find_only and any(command.dependency_ids for _, command in commands):
            commands = self._own_dependencies_only(commands, results)
        count = len(results)
        parts = {}  # type: Dict[int, List[Tuple[int, int, int]]]
        if any(command.tasks is not None for _, command in commands):
            commands = self._expand_sweeps(commands, results, parts, not find_only)
        info = {}  # type: Dict[str, str]
        if commands:
            with FileLock(self.lock_path, self.lock_wait):
                known = {}  # type: Dict[Tuple[str, str], str]
                sources = []  # type: List[str]
                for user in sorted({command.user for _, command in commands}):
                    found, source = self.existing_tokens(user, lookback)
                    known.update(((user, token), job_id) for token, job_id in found.items())
                    if source not in sources:
                        sources.append(source)
                info["dedup"] = "; ".join(sources)
                if find_only:
                    for index, command in commands:
                        key = (command.user, command.token)
                        results[index] = (
                            {"token": command.token, "job_id": known[key], "reused": True}
                            if key in known
                            else {"token": command.token,
                                  "error": AgentError(NOT_SUBMITTED, "no job carries the token")}
                        )  # fmt: skip
                else:
                    self._submit_all(commands, known, results, concurrency)
        for index, slots in parts.items():
            done = [(first, n, results[slot]) for first, slot, n in slots]
            errors = [r["error"] for _, _, r in done if "job_id" not in r]
            arrays = [{"job_id": r["job_id"], "first": first, "tasks": n}
                      for first, n, r in done if "job_id" in r]  # fmt: skip
            results[index]["arrays"] = arrays
            results[index]["error"] = errors[0] if errors else None
        del results[count:]
        response = {
            "v": PROTOCOL_VERSION,
            "ok": True,
            "op": "submit",
            "results": [_result_json(result) for result in results],
        }  # type: Dict[str, Any]
        if info:
            response["info"] = info
        return response

    def _expand_sweeps(
        self,
        commands: List[Tuple[int, SbatchCommand]],
        results: List[Dict[str, Any]],
        parts: Dict[int, List[Tuple[int, int, int]]],
        stage: bool = True,
    ) -> List[Tuple[int, SbatchCommand]]:
        """Each sweep as its arrays (``split_sweep``), its task files written first; each array
        gets a result slot of its own, listed in ``parts`` by the sweep's (first, slot, tasks):
        its answer's ``arrays`` say which positions each array holds, as task ``p - first``."""
        size, failure = 0, None  # type: Tuple[int, Optional[AgentError]]
        try:
            size = self.execute(MaxArraySizeCommand())
        except AgentError as exc:
            failure = exc
        expanded = []  # type: List[Tuple[int, SbatchCommand]]
        for index, command in commands:
            if command.tasks is None:
                expanded.append((index, command))
                continue
            results[index] = {"token": command.token}
            try:
                if failure is not None:
                    raise failure
                split = split_sweep(command, size)
                if stage:  # not for a look-up (find_only): nothing will run
                    self.execute(StageTasksCommand(command, command.directory))
            except AgentError as exc:
                results[index]["error"] = exc
                continue
            parts[index] = []
            for first, part in split:
                parts[index].append((first, len(results), min(size, len(command.tasks) - first)))
                expanded.append((len(results), part))
                results.append({})
        return expanded

    def _own_dependencies_only(
        self, commands: List[Tuple[int, SbatchCommand]], results: List[Dict[str, Any]]
    ) -> List[Tuple[int, SbatchCommand]]:
        """The commands whose dependencies are all their user's jobs; the others fail, unsent."""
        owners = self.execute(JobOwnersCommand())
        kept = []  # type: List[Tuple[int, SbatchCommand]]
        for index, command in commands:
            refused = foreign_dependency(command, owners)
            if refused is None:
                kept.append((index, command))
            else:
                results[index] = {"token": command.token, "error": refused}
        return kept

    def _submit_all(
        self,
        commands: List[Tuple[int, SbatchCommand]],
        known: Dict[Tuple[str, str], str],
        results: List[Dict[str, Any]],
        concurrency: int,
    ) -> None:
        """sbatch every (user, token) not ``known``, ``concurrency`` at a time; the others are
        reused.

        A (user, token) repeated within the request is submitted once (its first occurrence).
        Once the controller is unreachable, jobs not yet started are not attempted (a transient
        error each), so an overloaded slurmctld is not hit again until the worker's back-off.
        """
        unavailable = []  # type: List[AgentError]
        guard = threading.Lock()
        first = {}  # type: Dict[Tuple[str, str], int]
        todo = []  # type: List[Tuple[int, SbatchCommand]]
        for index, command in commands:
            key = (command.user, command.token)
            if key not in known and key not in first:
                first[key] = index
                todo.append((index, command))

        def one(item: Tuple[int, SbatchCommand]) -> None:
            index, command = item
            with guard:
                stop = unavailable[0] if unavailable else None
            if stop is not None:
                results[index] = {"token": command.token, "error": stop}
                return
            try:
                results[index] = {"token": command.token, "job_id": self.execute(command)}
            except AgentError as exc:
                results[index] = {"token": command.token, "error": exc}
                if exc.code in (SCHEDULER_UNAVAILABLE, SLURM_NOT_FOUND):
                    with guard:
                        unavailable.append(
                            AgentError(exc.code, "not attempted: " + exc.message, exc.transient)
                        )

        if concurrency == 1 or len(todo) < 2:
            for item in todo:
                one(item)
        else:
            from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415 - LAZY_IMPORTS

            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                list(pool.map(one, todo))
        for index, command in commands:
            token, key = command.token, (command.user, command.token)
            if key in known:
                results[index] = {"token": token, "job_id": known[key], "reused": True}
            elif first[key] != index:
                original = results[first[key]]
                results[index] = dict(original, reused="job_id" in original)

    def execute(self, command: SlurmCommand[T]) -> T:
        """Run one Slurm command with the clean environment and parse what it answered.

        The one place a Slurm client starts: as the agent, or, for a command with a ``run_as``
        user, under that user's ``setpriv`` prefix with the user's clean environment. A client
        not installed is SLURM_NOT_FOUND; one that does not answer within the command's timeout
        is transient (SCHEDULER_UNAVAILABLE).
        """
        argv = command.argv()
        name = argv[0]
        env = command.env(self.base_env)
        if command.run_as is not None:
            argv = command.run_as.prefix() + argv
            env = command.env(command.run_as.environment(self.base_env))
        try:
            code, out, err = self.run(argv, command.stdin(), command.timeout, env)
        except FileNotFoundError as exc:
            missing = exc.filename if isinstance(exc.filename, str) else name
            raise AgentError(
                SLURM_NOT_FOUND, "%s is not installed or not on PATH" % missing
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise AgentError(
                SCHEDULER_UNAVAILABLE,
                "%s did not answer within %.0f s" % (name, command.timeout),
                transient=True,
            ) from exc
        return command.parse(code, out, err)

    def existing_tokens(
        self, user: str, lookback: Optional[int] = None
    ) -> Tuple[Dict[str, str], str]:
        """Token -> job id for ``user``'s jobs already in Slurm, and which sources were consulted.

        ``lookback``: seconds of accounting sacct reads (default ``SACCT_WINDOW``).

        One squeue (required: without it a submission could duplicate a job, so its failure is
        transient) plus one sacct for jobs that already left squeue (``MinJobAge``); accounting
        may be absent, so a failing sacct is tolerated and reported in ``info.dedup``.
        """
        found = self.execute(SqueueTokensCommand(user))
        try:
            accounted = self.execute(SacctTokensCommand(user, lookback))
        except SlurmError as exc:
            return found, "squeue (sacct failed: %s)" % exc.message
        except AgentError as exc:
            missing = exc.code == SLURM_NOT_FOUND
            return found, "squeue (sacct %s)" % ("not installed" if missing else "timed out")
        for token, job_id in accounted.items():
            if token not in found or int(job_id) < int(found[token]):
                found[token] = job_id
        return found, "squeue+sacct"

    def status(self, job_ids: Any) -> Dict[str, Any]:
        """What Slurm says about jobs: one squeue, plus one sacct for what squeue cannot tell.

        sacct is asked about ids squeue does not list (ended more than ``MinJobAge`` ago) and
        about arrays (some tasks may have left squeue); a failing sacct leaves those ``missing``,
        with ``accounting: false`` and sacct's words in ``info.sacct``.
        """
        wanted = validate_job_ids(job_ids)
        response = {"v": PROTOCOL_VERSION, "ok": True, "op": "status"}  # type: Dict[str, Any]
        live = []  # type: List[Dict[str, Any]]
        accounted = []  # type: List[Dict[str, Any]]
        if wanted:
            bases = {job_id.partition("_")[0] for job_id in wanted}
            live = [s for s in self.execute(SqueueStatusCommand()) if s["base_id"] in bases]
            listed = {status["base_id"] for status in live}
            arrays = {status["base_id"] for status in live if "array_task" in status}
            ask = sorted((bases - listed) | arrays, key=int)
            if ask:
                try:
                    accounted = self.execute(SacctStatusCommand(ask))
                    response["accounting"] = True
                except AgentError as exc:
                    response["accounting"] = False
                    response["info"] = {"sacct": exc.message}
        response["statuses"], response["missing"] = merge_statuses(wanted, live, accounted)
        return response

    def cancel(self, targets: Any, min_uid: Any = None) -> Dict[str, Any]:
        """Cancel jobs, each as its user; each id gets ok, or why not.

        Every target's user is validated first; one squeue (as the agent) then says whose job
        each id is and its comment, and only a job of that user carrying that token is
        cancelled: a stale record never touches another job that reuses the Slurm id. One
        scancel per user, run as that user.
        """
        wanted = validate_targets(targets)
        lowest_uid = validate_min_uid(min_uid)
        errors = {}  # type: Dict[Tuple[str, str, str], AgentError]
        users = {}  # type: Dict[str, RunAs]
        for job_id, user, token in wanted:
            try:
                if user not in users:
                    users[user] = resolve_user(user, lowest_uid, self.lookup_user)
            except AgentError as exc:
                errors[(job_id, user, token)] = exc
        allowed = [target for target in wanted if target not in errors]
        done = {}  # type: Dict[Tuple[str, str], Optional[AgentError]]
        if allowed:
            owners = self.execute(JobOwnersCommand())
            by_user = {}  # type: Dict[str, List[str]]
            for job_id, user, token in allowed:
                owner = owners.get(job_id.partition("_")[0])
                refused = check_owner(job_id, user, token, owner)
                if refused is not None:
                    errors[(job_id, user, token)] = refused
                elif job_id not in by_user.setdefault(user, []):
                    by_user[user].append(job_id)
            for user, job_ids in by_user.items():
                for job_id, error in self.execute(ScancelCommand(job_ids, users[user])):
                    done[(user, job_id)] = error
        cancelled = []  # type: List[Dict[str, Any]]
        for job_id, user, token in wanted:
            error = errors.get((job_id, user, token)) or done.get((user, job_id))
            result = {"job_id": job_id, "ok": error is None}  # type: Dict[str, Any]
            if error is not None:
                result["error"] = error.to_json()
            cancelled.append(result)
        return {"v": PROTOCOL_VERSION, "ok": True, "op": "cancel", "cancelled": cancelled}

    def output(self, query: Any, min_uid: Any = None) -> Dict[str, Any]:
        """Read a piece of a job's stdout and/or stderr as the job's user (see ``read_chunk``).

        The query's user is validated first. Paths: those ``scontrol show job`` gives while
        slurmctld remembers the job, then the query's patterns, expanded with what Slurm knows
        about the job (scontrol, else one sacct, else the query's job name and user and the
        agent's host); the first that exists is read. Whatever Slurm says about the id must be
        the query's user's job with the query's token (else JOB_MISMATCH: the id was reused).
        """
        wanted = validate_output_query(query)
        run_as = resolve_user(wanted["user"], validate_min_uid(min_uid), self.lookup_user)
        job_id = wanted["job_id"]
        base, _, task = job_id.partition("_")
        values = {"A": base, "a": task or NO_TASK, "s": "batch", "t": "0", "n": "0"}
        values["x"] = wanted["job_name"] or "sbatch"  # sbatch's name for a script on stdin
        values["N"] = self.hostname
        values["u"] = run_as.name
        if not task:
            values["j"] = values["J"] = base
        paths = {}  # type: Dict[str, str]
        trouble = None  # type: Optional[AgentError]
        try:
            record = self.execute(ScontrolJobCommand(job_id))
        except AgentError as exc:
            record, trouble = None, exc
        if record is not None:
            owner = (record.get("UserId", "").split("(", 1)[0], record.get("Comment", ""))
            refused = check_owner(job_id, run_as.name, wanted["token"], owner)
            if refused is not None:
                raise refused
            values.update(_scontrol_values(record))
            paths = {"stdout": record.get("StdOut", ""), "stderr": record.get("StdErr", "")}
        elif wanted["patterns"]:
            try:
                values.update(self.execute(SacctJobCommand(job_id, run_as.name, wanted["token"])))
            except AgentError as exc:  # none: the request's and the agent's values
                if exc.code == JOB_MISMATCH:
                    raise
        chunks = []
        for stream in wanted["streams"]:
            pattern = wanted["patterns"].get(stream)
            if pattern is None and stream == "stderr" and not paths.get("stderr"):
                pattern = wanted["patterns"].get("stdout")  # Slurm's default: stderr with stdout
            candidates = []  # type: List[str]
            if paths.get(stream):
                # scontrol expands some symbols itself (see tests/unit/recorded/README.md): its
                # path completed by us, then as it is (a name may contain a literal '%').
                candidates += [expand_file_pattern(paths[stream], values), paths[stream]]
            if pattern:
                candidates.append(expand_file_pattern(pattern, values))
            chunk = self._read_stream(
                run_as, candidates, wanted["offset"], wanted["max_bytes"], trouble
            )
            chunk["stream"] = stream
            chunks.append(chunk)
        return {"v": PROTOCOL_VERSION, "ok": True, "op": "output", "output": chunks}

    def _read_stream(
        self,
        run_as: RunAs,
        candidates: List[str],
        offset: Optional[int],
        max_bytes: int,
        trouble: Optional[AgentError],
    ) -> Dict[str, Any]:
        """The chunk of the first candidate path that exists, or why there is none."""
        tried = []  # type: List[str]
        for path in candidates:
            if path in tried or not is_abs_path(path):
                continue  # e.g. '..' from a job name: never opened
            tried.append(path)
            try:
                return read_chunk(
                    path, offset, max_bytes, run_as=run_as, run=self.run, base=self.base_env
                )
            except AgentError as exc:
                return {"path": path, "error": exc.to_json()}
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                    error = AgentError(OUTPUT_UNREADABLE, "%s: %s" % (path, exc.strerror))
                    return {"path": path, "error": error.to_json()}
        if tried:
            error = AgentError(OUTPUT_NOT_FOUND, "no such file: %s" % ", ".join(tried))
            return {"path": tried[0], "error": error.to_json()}
        if candidates:
            error = AgentError(OUTPUT_UNREADABLE, "refusing the expanded path %r" % candidates[0])
        elif trouble is not None:
            error = trouble
        else:
            error = AgentError(
                OUTPUT_NOT_FOUND, "Slurm no longer knows the job and no output pattern was given"
            )
        return {"error": error.to_json()}

    # -- large answers -----------------------------------------------------------------------

    def stage_if_large(self, request: Dict[str, Any], response: Dict[str, Any]) -> str:
        """The answer line; PUT to ``result_put_url`` instead when longer than ``inline_limit``."""
        text = dumps(response)
        url = request.get("result_put_url")
        limit = request.get("inline_limit", 20000)
        if not url or not isinstance(limit, int) or len(text) <= limit:
            return text
        import http.client  # noqa: PLC0415 - see LAZY_IMPORTS

        try:
            self.put(_check_url(url), text.encode("utf-8"))
        except (OSError, http.client.HTTPException) as exc:
            # The jobs are in Slurm; a retry finds them by token and answers reused=true.
            return dumps(
                error_response(
                    str(response.get("op", "")),
                    AgentError(
                        RESULT_UPLOAD_FAILED, "cannot upload the answer: %s" % exc, transient=True
                    ),
                )
            )
        return dumps(
            {"v": PROTOCOL_VERSION, "ok": True, "op": response.get("op", ""), "staged": True}
        )


# ==== 7. main ====================================================================================


def read_payload(argv: Iterable[str], stdin: Any) -> str:
    args = list(argv)
    if len(args) != 1:
        raise AgentError(BAD_PAYLOAD, "usage: hpcb_agent.py <base64-payload> | -")
    if args[0] == "-":
        return str(stdin.read().decode("ascii", "replace"))
    return args[0]


def main(argv: List[str]) -> int:
    agent = Agent(lock_path=os.environ.get("HPCB_AGENT_LOCK") or DEFAULT_LOCK_PATH)
    try:
        line = agent.answer(read_payload(argv, sys.stdin.buffer))
        code = 0
    except AgentError as exc:
        line = dumps(error_response("", exc))
        code = 0
    except Exception as exc:  # the one JSON line even when crashing; outcome unknown: transient
        line = dumps(
            error_response(
                "", AgentError(AGENT_CRASHED, "%s: %s" % (type(exc).__name__, exc), True)
            )
        )
        code = 70
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
