"""Run the head-node agent on a ParallelCluster head node through SSM Run Command.

The agent travels with every command, so nothing has to be installed on the head node and the
agent that runs is always the one this Lambda was deployed with. The command is a CONSTANT
template; its only variable part is the base64 payload (checked with ``is_safe_payload``), so no
user text (script, job name, ...) can ever reach the head node's shell::

    python3 -c "import base64,sys,zlib;exec(compile(zlib.decompress(base64.b64decode('<AGENT>')),
    'hpcb_agent.py','exec'))" '<PAYLOAD>'

Outcome unknown (timeouts, cancelled or undeliverable commands) maps to transient errors: a retry
is safe because the agent de-duplicates submissions by token.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import hashlib
import time
import uuid
import zlib
from collections.abc import Callable
from functools import cache
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from broker.adapters.aws import THROTTLING_CODES, error_code, translate
from broker.agent.protocol import (
    AgentRequest,
    AgentResponse,
    decode_response,
    encode_request,
    is_safe_payload,
)
from broker.errors import (
    BrokerError,
    PayloadTooLargeError,
    PermanentError,
    RunnerTimeoutError,
    ThrottledError,
    TransientError,
)
from broker.ports import ClusterTarget
from broker.runners import AGENT_PATH

#: Longest command sent inline. AWS documents no per-parameter size for SendCommand, but the
#: request can fail with MaxDocumentSizeExceeded, "The size limit of a document is 64 KB" (SSM API
#: reference, SendCommand errors; botocore's SSM model), and parameter values are substituted into
#: the document. We stay at half of that, leaving room for the AWS-RunShellScript document itself
#: and its JSON escaping. Larger requests are staged in S3 and fetched by the agent.
MAX_INLINE_COMMAND = 32 * 1024
#: GetCommandInvocation returns only "the first 24,000 characters written by the plugin to stdout".
STDOUT_LIMIT = 24_000
#: Answers longer than this are PUT to S3 by the agent (below STDOUT_LIMIT, with margin).
INLINE_ANSWER_LIMIT = 20_000
#: Lifetime of the presigned GET URL of a staged request.
PAYLOAD_URL_SECONDS = 900


def compact_agent(source: str) -> bytes:
    """The agent without docstrings and comments (an ast round trip), for smaller commands.

    The same code runs (tests run the compacted agent under Python 3.7); only text that the
    interpreter ignores is dropped, which keeps more requests under the inline limit.
    """
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.unparse(tree).encode("utf-8")


@cache
def agent_b64() -> str:
    """The agent, compacted, compressed and base64-encoded once, on first use.

    Not at import: the API function imports this module (through the wiring) but never sends
    a command, and the ast round trip cost it ~200 ms of cold start.
    """
    source = AGENT_PATH.read_text(encoding="utf-8")
    return base64.b64encode(zlib.compress(compact_agent(source), 9)).decode("ascii")


_TEMPLATE = (
    'python3 -c "import base64,sys,zlib;exec(compile(zlib.decompress(base64.b64decode('
    "'{agent}')),'hpcb_agent.py','exec'))\" '{payload}'"
)

_WAITING = frozenset({"Pending", "InProgress", "Delayed", "Cancelling"})
_TIMED_OUT = frozenset(
    {
        "TimedOut",
        "DeliveryTimedOut",
        "ExecutionTimedOut",
        "Delivery Timed Out",
        "Execution Timed Out",
    }
)
_GONE = frozenset({"Cancelled", "Undeliverable", "Terminated"})
_REFUSED = frozenset({"AccessDenied", "InvalidPlatform", "InvalidDocument"})
#: SendCommand error codes meaning the command can never run as sent.
_PERMANENT_SEND_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "InvalidDocument",
        "InvalidDocumentVersion",
        "InvalidParameters",
        "UnsupportedPlatformType",
        "InvalidPlatform",
    }
)


def build_command(payload: str) -> str:
    """The shell command for one payload: the constant template around two base64 strings.

    Raises:
        PermanentError: the payload (or the embedded agent) is not pure base64.
    """
    agent = agent_b64()
    if not is_safe_payload(payload) or not is_safe_payload(agent):
        raise PermanentError("refusing a non-base64 agent payload", code="UNSAFE_PAYLOAD")
    return _TEMPLATE.format(agent=agent, payload=payload)


def map_client_error(exc: ClientError | BotoCoreError, what: str) -> BrokerError:
    """SSM ``ClientError``/``BotoCoreError`` -> broker error (use with ``raise ... from exc``)."""
    if isinstance(exc, ClientError):
        code = error_code(exc)
        message = f"{what}: {code}"  # AWS's own text (ARNs, ids) stays out of answers
        if code in THROTTLING_CODES:
            return ThrottledError(message)
        if code == "InvalidInstanceId":
            # Not managed by SSM (agent stopped, instance stopped or replaced): may come back.
            return TransientError(message, code="HEAD_NODE_UNREACHABLE")
        if code == "MaxDocumentSizeExceeded":
            return PayloadTooLargeError(message)
        if code in _PERMANENT_SEND_CODES:
            return PermanentError(message, code="SSM_COMMAND_REFUSED")
    return translate(exc, what)


class SsmRunner:
    """Runs the agent on a head node with SSM ``AWS-RunShellScript``; implements ``CommandRunner``.

    Args:
        ssm_client: a boto3 SSM client.
        s3_client: a boto3 S3 client (needed with ``staging_bucket``).
        staging_bucket: bucket for requests and answers too large to go inline (``payloads/``
            and ``results/`` prefixes; give them a short lifecycle expiry). None: no staging,
            large requests raise PayloadTooLargeError.
        timeout_seconds: how long the agent may run (SSM ``executionTimeout``) and how long we
            wait for it.
        poll_seconds: period of ``GetCommandInvocation`` polls.
        sleep, clock: injected for tests.
        grace_seconds: extra wait after ``timeout_seconds`` for SSM to report the final status.
        max_inline_command: longest command sent inline (see ``MAX_INLINE_COMMAND``).
    """

    def __init__(
        self,
        ssm_client: Any,
        s3_client: Any | None = None,
        staging_bucket: str | None = None,
        timeout_seconds: float = 120,
        poll_seconds: float = 1.0,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        grace_seconds: float = 15,
        max_inline_command: int = MAX_INLINE_COMMAND,
    ) -> None:
        if staging_bucket and s3_client is None:
            raise ValueError("a staging bucket needs an S3 client")
        self._ssm = ssm_client
        self._s3: Any = s3_client
        self._bucket = staging_bucket or None
        self._timeout = timeout_seconds
        self._poll = poll_seconds
        self._sleep = sleep
        self._clock = clock
        self._grace = grace_seconds
        self._max_inline = max_inline_command

    def run(self, target: ClusterTarget, request: AgentRequest) -> AgentResponse:
        """Run the agent with one request on the target's head node and return its answer.

        Raises:
            ThrottledError: SSM or S3 asked us to slow down.
            RunnerTimeoutError: no final status in time, or SSM timed the command out.
            TransientError: head node unreachable, command cancelled, output unusable.
            PayloadTooLargeError: the request is too large and there is no staging bucket.
            PermanentError: access denied, unsupported platform, agent cannot start.
        """
        if target.mode != "ssm" or not target.instance_id:
            raise PermanentError(
                f"SsmRunner cannot reach cluster {target.name!r} (mode {target.mode})",
                code="RUNNER_MISMATCH",
            )
        result_key: str | None = None
        if self._bucket:
            result_key = f"results/{uuid.uuid4()}.json"
            request = request.model_copy(
                update={
                    "result_put_url": self._presign_put(result_key),
                    "inline_limit": min(request.inline_limit, INLINE_ANSWER_LIMIT),
                }
            )
        command, payload_key = self._command_for(request)
        invocation = self._execute(target.instance_id, command, request.op)
        if payload_key is not None:
            self._delete(payload_key)
        response = self._interpret(invocation)
        if response.staged:
            response = self._read_staged(result_key)
        return response

    # -- building the command ---------------------------------------------------------------

    def _command_for(self, request: AgentRequest) -> tuple[str, str | None]:
        """The inline command, or a ``fetch`` command for a request staged in S3."""
        command = build_command(encode_request(request))
        if len(command) <= self._max_inline:
            return command, None
        if not self._bucket:
            raise PayloadTooLargeError(
                f"the agent request needs a {len(command)}-character command, more than the "
                f"{self._max_inline} SSM can carry inline, and no staging bucket is configured"
            )
        payload_key = f"payloads/{uuid.uuid4()}.json"
        body = request.model_dump_json(exclude_none=True).encode("utf-8")
        try:
            self._s3.put_object(
                Bucket=self._bucket, Key=payload_key, Body=body, ContentType="application/json"
            )
            url = self._s3.generate_presigned_url(
                "get_object",
                Params={"Bucket": self._bucket, "Key": payload_key},
                ExpiresIn=PAYLOAD_URL_SECONDS,
            )
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, "stage the agent request in S3") from exc
        fetch = AgentRequest(
            op="fetch",
            payload_url=url,
            payload_sha256=hashlib.sha256(body).hexdigest(),
            result_put_url=request.result_put_url,
            inline_limit=request.inline_limit,
        )
        command = build_command(encode_request(fetch))
        if len(command) > self._max_inline:  # only with an absurdly long presigned URL
            raise PayloadTooLargeError("even the staged-request command is too long for SSM")
        return command, payload_key

    def _presign_put(self, key: str) -> str:
        # Valid for as long as the agent may run, plus delivery time.
        expires = int(max(PAYLOAD_URL_SECONDS, self._timeout + self._grace + 60))
        try:
            url: str = self._s3.generate_presigned_url(
                "put_object",
                Params={"Bucket": self._bucket, "Key": key, "ContentType": "application/json"},
                ExpiresIn=expires,
            )
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, "presign the answer upload URL") from exc
        return url

    # -- running it ---------------------------------------------------------------------------

    def _execute(self, instance_id: str, command: str, op: str) -> dict[str, Any]:
        """Send the command and poll until a final status; return the invocation."""
        try:
            sent = self._ssm.send_command(
                DocumentName="AWS-RunShellScript",
                InstanceIds=[instance_id],
                Parameters={
                    "commands": [command],
                    "executionTimeout": [str(int(self._timeout))],
                },
                # Delivery timeout: SSM's minimum is 30 s.
                TimeoutSeconds=max(30, int(self._timeout)),
                Comment=f"hpc-broker {op}"[:100],
            )
        except (ClientError, BotoCoreError) as exc:
            raise map_client_error(exc, "send the agent command") from exc
        command_id = str(sent["Command"]["CommandId"])
        deadline = self._clock() + self._timeout + self._grace
        while True:
            self._sleep(self._poll)
            invocation = self._poll_once(command_id, instance_id)
            if invocation is not None and not _is_waiting(invocation):
                return invocation
            if self._clock() >= deadline:
                self._cancel(command_id, instance_id)
                status = invocation.get("Status") if invocation else "not yet delivered"
                raise RunnerTimeoutError(
                    f"SSM command {command_id} on {instance_id} had no final status after "
                    f"{self._timeout + self._grace:g} s (last status: {status}); outcome unknown"
                )

    def _poll_once(self, command_id: str, instance_id: str) -> dict[str, Any] | None:
        """One GetCommandInvocation; None while the invocation does not exist yet."""
        try:
            invocation: dict[str, Any] = self._ssm.get_command_invocation(
                CommandId=command_id, InstanceId=instance_id
            )
        except ClientError as exc:
            code = error_code(exc)
            if code == "InvocationDoesNotExist":
                return None  # normal for a moment after SendCommand
            if code in THROTTLING_CODES:
                return None  # polling is read-only: just poll again later
            raise map_client_error(exc, "read the agent command status") from exc
        except BotoCoreError:
            return None  # a network blip while polling: the deadline still bounds the wait
        return invocation

    def _cancel(self, command_id: str, instance_id: str) -> None:
        """Best effort: do not let an abandoned command run later."""
        with contextlib.suppress(ClientError, BotoCoreError):
            self._ssm.cancel_command(CommandId=command_id, InstanceIds=[instance_id])

    # -- reading the answer -------------------------------------------------------------------

    def _interpret(self, invocation: dict[str, Any]) -> AgentResponse:
        status = str(invocation.get("Status", ""))
        details = str(invocation.get("StatusDetails") or status)
        where = f"SSM command {invocation.get('CommandId', '?')}"
        if details in _REFUSED or status in _REFUSED:
            raise PermanentError(f"{where} was refused: {details}", code="SSM_COMMAND_REFUSED")
        if status == "Success":
            return _decode_stdout(str(invocation.get("StandardOutputContent") or ""), where)
        if status == "Failed":
            return _decode_failed(invocation, where)
        if status in _TIMED_OUT or details in _TIMED_OUT:
            raise RunnerTimeoutError(f"{where}: {details}; outcome unknown")
        if details == "Undeliverable" or status == "Undeliverable":
            raise TransientError(
                f"{where}: the head node did not take the command (Undeliverable)",
                code="HEAD_NODE_UNREACHABLE",
            )
        if status in _GONE or details in _GONE:
            raise TransientError(f"{where}: {details}; outcome unknown", code="SSM_COMMAND_ENDED")
        raise TransientError(f"{where}: unexpected status {status}/{details}", code="SSM_STATUS")

    def _read_staged(self, result_key: str | None) -> AgentResponse:
        if result_key is None or self._bucket is None:
            raise TransientError(
                "the agent staged its answer but no staging bucket is configured",
                code="AGENT_BAD_OUTPUT",
            )
        try:
            obj = self._s3.get_object(Bucket=self._bucket, Key=result_key)
            body = obj["Body"].read().decode("utf-8", "replace")
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, "read the agent's staged answer") from exc
        response = decode_response(body)
        self._delete(result_key)
        if response.staged:
            raise TransientError("the staged answer is itself staged", code="AGENT_BAD_OUTPUT")
        return response

    def _delete(self, key: str) -> None:
        """Best effort; the bucket's lifecycle rule removes what this misses."""
        with contextlib.suppress(ClientError, BotoCoreError):
            self._s3.delete_object(Bucket=self._bucket, Key=key)


def _is_waiting(invocation: dict[str, Any]) -> bool:
    return str(invocation.get("Status", "")) in _WAITING


def _decode_stdout(stdout: str, where: str) -> AgentResponse:
    if len(stdout) >= STDOUT_LIMIT:
        raise TransientError(
            f"{where}: the agent's answer was cut at SSM's {STDOUT_LIMIT}-character output "
            "limit (configure a staging bucket for large answers)",
            code="AGENT_OUTPUT_TRUNCATED",
        )
    return decode_response(stdout)


def _decode_failed(invocation: dict[str, Any], where: str) -> AgentResponse:
    """A Failed invocation: the agent's own answer if it printed one, else why it did not."""
    stdout = str(invocation.get("StandardOutputContent") or "")
    stderr = str(invocation.get("StandardErrorContent") or "").strip()
    try:
        return _decode_stdout(stdout, where)
    except TransientError as exc:
        if exc.code == "AGENT_OUTPUT_TRUNCATED":
            raise
        code = invocation.get("ResponseCode")
        if code == 127 or "command not found" in stderr:
            raise PermanentError(
                f"{where}: python3 is not available on the head node: {stderr[-300:]!r}",
                code="AGENT_NOT_RUNNABLE",
            ) from exc
        raise TransientError(
            f"{where} failed with exit code {code} and no answer: {stderr[-300:]!r}",
            code="AGENT_FAILED",
        ) from exc
