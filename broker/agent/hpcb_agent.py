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

Exactly-once: every job carries a token (``hpcb:<request id>``) in its Slurm comment. Under an
exclusive ``flock`` (so two deliveries of the same message serialize), the agent lists the tokens
already in Slurm (one ``squeue``, plus one ``sacct`` when accounting exists) and answers
``reused: true`` for a token it finds instead of submitting it again.
"""

from __future__ import annotations

import base64
import binascii
import errno
import fcntl
import http.client
import json
import os
import platform
import pwd
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

AGENT_VERSION = "1.0.0"
PROTOCOL_VERSION = 1

#: Default lock file; ``HPCB_AGENT_LOCK`` overrides it (tests, several agents on one machine).
DEFAULT_LOCK_PATH = "/var/tmp/hpcb-agent.lock"  # noqa: S108 - opened with O_NOFOLLOW, 0600
#: How long a call waits for another agent call to release the lock before giving up (transient).
LOCK_WAIT_SECONDS = 90.0

SBATCH_TIMEOUT_SECONDS = 30.0
QUERY_TIMEOUT_SECONDS = 30.0
HTTP_TIMEOUT_SECONDS = 30.0
#: Largest staged request the agent downloads (a fetch of a bigger object is refused).
MAX_FETCH_BYTES = 64 * 1024 * 1024
#: Same limit as ``broker.models.MAX_SCRIPT_BYTES``.
MAX_SCRIPT_BYTES = 64 * 1024
#: ParallelCluster installs Slurm here; SSM runs commands with a minimal PATH that may miss it.
FALLBACK_SLURM_BIN = "/opt/slurm/bin"
#: How far back ``sacct`` looks for finished jobs carrying a token.
SACCT_WINDOW = "now-7days"
MAX_MESSAGE_CHARS = 1000

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

# ---- validation: the same tight patterns as broker/models.py -----------------------------------
# Always used with ``fullmatch``: unlike ``match``, a trailing newline cannot slip past ``$``.

_TOKEN = re.compile(r"^hpcb:[a-z0-9]{1,64}$")
_SLURM_WORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_TIME_LIMIT = re.compile(
    r"^(UNLIMITED|\d{1,7}|\d{1,7}:\d{1,2}|\d{1,7}:\d{1,2}:\d{1,2}|\d{1,4}-\d{1,2}(:\d{1,2}){0,2})$"
)
_MEMORY = re.compile(r"^[1-9]\d{0,8}[KMGT]?$")
_ABS_PATH = re.compile(r"^/(?!.*(^|/)\.\.(/|$))[^\x00\n\r]{0,1023}$")
_DIGITS = re.compile(r"^[0-9]{1,7}$")
_JOB_ID = re.compile(r"^[0-9]{1,20}$")


class AgentError(Exception):
    """An error the agent reports in its JSON answer (for one job or for the whole call)."""

    def __init__(self, code: str, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.transient = transient

    def to_json(self) -> Dict[str, Any]:
        return {"code": self.code, "message": self.message, "transient": self.transient}


class _Text(object):
    """A string option checked against a pattern."""

    def __init__(self, pattern: "re.Pattern[str]", what: str) -> None:
        self.pattern = pattern
        self.what = what

    def check(self, key: str, value: Any) -> str:
        if not isinstance(value, str) or not self.pattern.fullmatch(value):
            raise AgentError(INVALID_OPTION, "option %r: expected %s" % (key, self.what))
        return value


class _Int(object):
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


#: Option key -> (sbatch flag, validator). The order here is the order in the argv.
OPTIONS = (
    ("name", "--job-name", _Text(_JOB_NAME, "a job name ([A-Za-z0-9][A-Za-z0-9_.-]{0,127})")),
    ("partition", "--partition", _Text(_SLURM_WORD, "a Slurm name ([A-Za-z0-9_.-], max 64)")),
    ("account", "--account", _Text(_SLURM_WORD, "a Slurm name ([A-Za-z0-9_.-], max 64)")),
    ("qos", "--qos", _Text(_SLURM_WORD, "a Slurm name ([A-Za-z0-9_.-], max 64)")),
    ("time_limit", "--time", _Text(_TIME_LIMIT, "minutes, [D-]HH:MM:SS or UNLIMITED")),
    ("nodes", "--nodes", _Int(1, 10000)),
    ("ntasks", "--ntasks", _Int(1, 1000000)),
    ("cpus_per_task", "--cpus-per-task", _Int(1, 1024)),
    ("mem", "--mem", _Text(_MEMORY, "a memory size such as 4G")),
    ("working_directory", "--chdir", _Text(_ABS_PATH, "an absolute path without '..'")),
)  # type: Tuple[Tuple[str, str, Any], ...]
_OPTION_KEYS = frozenset(key for key, _, _ in OPTIONS)


def validate_token(token: Any) -> str:
    """Return the token if it is a well-formed ``hpcb:<id>`` token, else raise INVALID_JOB."""
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise AgentError(INVALID_JOB, "job token must look like 'hpcb:<lowercase id>'")
    return token


def validate_script(script: Any) -> bytes:
    """Return the script as UTF-8 bytes if it is an acceptable batch script."""
    if not isinstance(script, str):
        raise AgentError(INVALID_SCRIPT, "the script must be a string")
    if "\x00" in script:
        raise AgentError(INVALID_SCRIPT, "the script must not contain NUL characters")
    if not script.startswith("#!"):
        raise AgentError(INVALID_SCRIPT, "the script must start with a shebang line")
    data = script.encode("utf-8")
    if len(data) > MAX_SCRIPT_BYTES:
        raise AgentError(INVALID_SCRIPT, "the script is larger than %d bytes" % MAX_SCRIPT_BYTES)
    return data


def option_args(options: Any) -> List[str]:
    """Validate job options and return one ``--opt=value`` argument per option.

    Unknown keys are refused (``INVALID_OPTION``): the agent never passes through anything it
    has not checked itself.
    """
    if not isinstance(options, dict):
        raise AgentError(INVALID_OPTION, "options must be an object")
    unknown = sorted(str(key) for key in options if key not in _OPTION_KEYS)
    if unknown:
        raise AgentError(INVALID_OPTION, "unknown option(s): %s" % ", ".join(unknown)[:200])
    args = []
    for key, flag, validator in OPTIONS:
        if key in options and options[key] is not None:
            args.append(flag + "=" + validator.check(key, options[key]))
    return args


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


def parse_parsable(stdout: str) -> str:
    """The job id in ``sbatch --parsable`` output (``jobid`` or ``jobid;cluster``).

    Raises a transient error when there is none: sbatch said it succeeded, so the job may exist;
    a retry finds it by its token.
    """
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if lines:
        job_id = lines[-1].split(";", 1)[0].strip()
        if _JOB_ID.fullmatch(job_id):
            return job_id
    raise AgentError(
        SBATCH_BAD_OUTPUT,
        "sbatch succeeded but printed no job id: %r" % stdout[:200],
        transient=True,
    )


class SbatchCommand(object):
    """``sbatch`` for one job: validated argv, the script as stdin data, and the output parser.

    Raises ``AgentError`` (permanent) on construction when the job is not acceptable.
    """

    def __init__(self, job: Any) -> None:
        if not isinstance(job, dict):
            raise AgentError(INVALID_JOB, "a job must be an object")
        unknown = sorted(str(key) for key in job if key not in ("token", "script", "options"))
        if unknown:
            raise AgentError(INVALID_JOB, "unknown job field(s): %s" % ", ".join(unknown)[:200])
        self.token = validate_token(job.get("token"))
        self.script = validate_script(job.get("script"))
        self._options = option_args(job.get("options", {}))

    def argv(self) -> List[str]:
        """sbatch's arguments: no script file, so sbatch reads the script from stdin."""
        return ["sbatch", "--parsable", "--comment=" + self.token, *self._options]

    def stdin(self) -> bytes:
        return self.script

    def parse(self, returncode: int, stdout: str, stderr: str) -> str:
        """The new job id, or raise a classified ``AgentError``."""
        if returncode != 0:
            raise classify_sbatch_failure(returncode, stderr)
        return parse_parsable(stdout)


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
SACCT_ARGV = ["sacct", "-a", "-X", "-n", "-P", "-o", "jobid,user,comment", "-S", SACCT_WINDOW]


# ---- effects: processes, HTTP, lock (injected, so tests replace them) ---------------------------

RunResult = Tuple[int, str, str]
Runner = Callable[[List[str], Optional[bytes], float], RunResult]


def resolve_executable(name: str) -> str:
    """Path of a Slurm client: PATH first, then ParallelCluster's /opt/slurm/bin."""
    found = shutil.which(name)
    if found:
        return found
    fallback = os.path.join(FALLBACK_SLURM_BIN, name)
    if os.path.isfile(fallback) and os.access(fallback, os.X_OK):
        return fallback
    raise FileNotFoundError(errno.ENOENT, "command not found", name)


def run_process(argv: List[str], stdin: Optional[bytes], timeout: float) -> RunResult:
    """Run an argv (never through a shell); FileNotFoundError or TimeoutExpired propagate."""
    executable = resolve_executable(argv[0])
    completed = subprocess.run(
        [executable, *argv[1:]],
        input=stdin if stdin is not None else b"",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        shell=False,
        timeout=timeout,
        check=False,
    )
    return (
        completed.returncode,
        completed.stdout.decode("utf-8", "replace"),
        completed.stderr.decode("utf-8", "replace"),
    )


def _check_url(url: Any) -> str:
    if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in ("https", "http"):
        raise AgentError(BAD_REQUEST, "URLs must be http(s)")
    return url


def http_get(url: str) -> bytes:
    """Download a staged request (a presigned S3 GET URL)."""
    # Only http(s): _check_url refuses file:// and other schemes urllib would open.
    request = urllib.request.Request(_check_url(url), method="GET")  # noqa: S310
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as answer:  # noqa: S310
        data = answer.read(MAX_FETCH_BYTES + 1)
    if len(data) > MAX_FETCH_BYTES:
        raise AgentError(FETCH_FAILED, "staged request larger than %d bytes" % MAX_FETCH_BYTES)
    return data


def http_put(url: str, body: bytes) -> None:
    """Upload a large answer (a presigned S3 PUT URL signed for Content-Type application/json)."""
    request = urllib.request.Request(  # noqa: S310 - http(s) only, see _check_url
        _check_url(url), data=body, method="PUT", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as answer:  # noqa: S310
        answer.read()


class FileLock(object):
    """An exclusive ``flock`` on a file, waited for up to ``wait_seconds`` (then AGENT_BUSY)."""

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
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def current_user() -> Optional[str]:
    """The agent's user name as Slurm prints it (None if the uid has no name)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return None


# ---- the agent ----------------------------------------------------------------------------------


def decode_payload(payload: str) -> Dict[str, Any]:
    """Base64 JSON -> request dict; ``AgentError(BAD_PAYLOAD)`` for anything else."""
    try:
        raw = base64.b64decode(payload.strip().encode("ascii"), validate=True)
        request = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeError, binascii.Error) as exc:
        raise AgentError(BAD_PAYLOAD, "the payload is not base64-encoded JSON: %s" % exc) from exc
    if not isinstance(request, dict):
        raise AgentError(BAD_PAYLOAD, "the payload must be a JSON object")
    return request


def error_response(op: str, error: AgentError) -> Dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "ok": False, "op": op, "error": error.to_json()}


def dumps(document: Dict[str, Any]) -> str:
    return json.dumps(document, separators=(",", ":"), sort_keys=False)


class Agent(object):
    """Handles one request. Effects are injected so that tests run without Slurm or network.

    Args:
        run: runs an argv (``run_process``): ``(argv, stdin bytes, timeout) -> (rc, out, err)``.
        get: downloads a URL (``http_get``).
        put: uploads bytes to a URL (``http_put``).
        lock_path: the lock file serializing check-and-submit.
        lock_wait: seconds to wait for that lock.
        user: only jobs of this user count when looking for tokens (None: any user).
    """

    def __init__(
        self,
        *,
        run: Runner = run_process,
        get: Callable[[str], bytes] = http_get,
        put: Callable[[str, bytes], None] = http_put,
        lock_path: str = DEFAULT_LOCK_PATH,
        lock_wait: float = LOCK_WAIT_SECONDS,
        user: Optional[str] = None,
    ) -> None:
        self.run = run
        self.get = get
        self.put = put
        self.lock_path = lock_path
        self.lock_wait = lock_wait
        self.user = user

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
        if op == "submit":
            return self.submit(request.get("jobs", []))
        if op == "fetch":
            raise AgentError(BAD_REQUEST, "a fetched request cannot be another fetch")
        raise AgentError(BAD_REQUEST, "unknown op %r" % (str(op)[:32],))

    # -- ops ---------------------------------------------------------------------------------

    def ping(self) -> Dict[str, Any]:
        try:
            code, out, err = self.run(["sbatch", "--version"], None, QUERY_TIMEOUT_SECONDS)
            sbatch = (out.strip() or trim_message(err)) if code == 0 else trim_message(err)
        except FileNotFoundError:
            sbatch = "not found"
        except subprocess.TimeoutExpired:
            sbatch = "timed out"
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
        url = _check_url(request.get("payload_url"))
        try:
            data = self.get(url)
        except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
            raise AgentError(
                FETCH_FAILED, "cannot download the staged request: %s" % exc, transient=True
            ) from exc
        try:
            inner = json.loads(data.decode("utf-8"))
        except (ValueError, UnicodeError) as exc:
            raise AgentError(BAD_PAYLOAD, "the staged request is not JSON: %s" % exc) from exc
        if not isinstance(inner, dict):
            raise AgentError(BAD_PAYLOAD, "the staged request must be a JSON object")
        return inner

    def submit(self, jobs: Any) -> Dict[str, Any]:
        if not isinstance(jobs, list):
            raise AgentError(BAD_REQUEST, "jobs must be a list")
        results = []  # type: List[Dict[str, Any]]
        commands = []  # type: List[Tuple[int, SbatchCommand]]
        for job in jobs:
            try:
                commands.append((len(results), SbatchCommand(job)))
                results.append({})
            except AgentError as exc:
                token = job.get("token") if isinstance(job, dict) else None
                results.append({"token": token if isinstance(token, str) else "", "error": exc})
        info = {}  # type: Dict[str, str]
        if commands:
            with FileLock(self.lock_path, self.lock_wait):
                known, info["dedup"] = self.existing_tokens()
                self._submit_all(commands, known, results)
        response = {
            "v": PROTOCOL_VERSION,
            "ok": True,
            "op": "submit",
            "results": [_result_json(result) for result in results],
        }  # type: Dict[str, Any]
        if info:
            response["info"] = info
        return response

    def _submit_all(
        self,
        commands: List[Tuple[int, SbatchCommand]],
        known: Dict[str, str],
        results: List[Dict[str, Any]],
    ) -> None:
        unavailable = None  # type: Optional[AgentError]
        for index, command in commands:
            token = command.token
            if token in known:
                results[index] = {"token": token, "job_id": known[token], "reused": True}
            elif unavailable is not None:
                # Once the controller is unreachable, do not spend a timeout on every job.
                results[index] = {"token": token, "error": unavailable}
            else:
                try:
                    job_id = self._sbatch(command)
                    known[token] = job_id
                    results[index] = {"token": token, "job_id": job_id}
                except AgentError as exc:
                    results[index] = {"token": token, "error": exc}
                    if exc.code in (SCHEDULER_UNAVAILABLE, SLURM_NOT_FOUND):
                        unavailable = AgentError(
                            exc.code, "not attempted: " + exc.message, exc.transient
                        )

    def _sbatch(self, command: SbatchCommand) -> str:
        try:
            code, out, err = self.run(command.argv(), command.stdin(), SBATCH_TIMEOUT_SECONDS)
        except FileNotFoundError as exc:
            raise AgentError(SLURM_NOT_FOUND, "sbatch is not installed or not on PATH") from exc
        except subprocess.TimeoutExpired as exc:
            raise AgentError(
                SCHEDULER_UNAVAILABLE,
                "sbatch did not answer within %.0f s" % SBATCH_TIMEOUT_SECONDS,
                transient=True,
            ) from exc
        return command.parse(code, out, err)

    def existing_tokens(self) -> Tuple[Dict[str, str], str]:
        """Token -> job id for jobs already in Slurm, and which sources were consulted.

        One squeue (required: without it a submission could duplicate a job, so its failure is
        transient) plus one sacct for jobs that already left squeue (``MinJobAge``); accounting
        may be absent, so a failing sacct is tolerated and reported in ``info.dedup``.
        """
        try:
            code, out, err = self.run(list(SQUEUE_ARGV), None, QUERY_TIMEOUT_SECONDS)
        except FileNotFoundError as exc:
            raise AgentError(SLURM_NOT_FOUND, "squeue is not installed or not on PATH") from exc
        except subprocess.TimeoutExpired as exc:
            raise AgentError(
                SCHEDULER_UNAVAILABLE, "squeue did not answer in time", transient=True
            ) from exc
        if code != 0:
            raise AgentError(
                SCHEDULER_UNAVAILABLE,
                trim_message(err) or "squeue exited with status %d" % code,
                transient=True,
            )
        found = parse_token_lines(out, self.user)
        try:
            code, out, err = self.run(list(SACCT_ARGV), None, QUERY_TIMEOUT_SECONDS)
        except FileNotFoundError:
            return found, "squeue (sacct not installed)"
        except subprocess.TimeoutExpired:
            return found, "squeue (sacct timed out)"
        if code != 0:
            return found, "squeue (sacct failed: %s)" % trim_message(err, 200)
        for token, job_id in parse_token_lines(out, self.user).items():
            if token not in found or int(job_id) < int(found[token]):
                found[token] = job_id
        return found, "squeue+sacct"

    # -- large answers -----------------------------------------------------------------------

    def stage_if_large(self, request: Dict[str, Any], response: Dict[str, Any]) -> str:
        """The answer line; PUT to ``result_put_url`` instead when longer than ``inline_limit``."""
        text = dumps(response)
        url = request.get("result_put_url")
        limit = request.get("inline_limit", 20000)
        if not url or not isinstance(limit, int) or len(text) <= limit:
            return text
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


def _result_json(result: Dict[str, Any]) -> Dict[str, Any]:
    document = {"token": result.get("token", "")}  # type: Dict[str, Any]
    if result.get("job_id") is not None:
        document["job_id"] = result["job_id"]
    if result.get("reused"):
        document["reused"] = True
    error = result.get("error")
    if isinstance(error, AgentError):
        document["error"] = error.to_json()
    return document


def effective_request(request: Dict[str, Any], inner: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Staging settings for a fetched request: the inner request's, else the outer one's."""
    if inner is None:
        return request
    merged = dict(request)
    for key in ("result_put_url", "inline_limit"):
        if key in inner:
            merged[key] = inner[key]
    return merged


def read_payload(argv: Iterable[str], stdin: Any) -> str:
    args = list(argv)
    if len(args) != 1:
        raise AgentError(BAD_PAYLOAD, "usage: hpcb_agent.py <base64-payload> | -")
    if args[0] == "-":
        return stdin.read().decode("ascii", "replace")
    return args[0]


def main(argv: List[str]) -> int:
    agent = Agent(lock_path=os.environ.get("HPCB_AGENT_LOCK") or DEFAULT_LOCK_PATH)
    agent.user = current_user()
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
