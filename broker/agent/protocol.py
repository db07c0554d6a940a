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

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from broker.errors import TransientError
from broker.models import JobSpec

PROTOCOL_VERSION = 1
_B64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")

AgentOp = Literal["ping", "submit", "fetch"]


class AgentErrorInfo(BaseModel):
    """An error the agent reports, for one job or for the whole call."""

    code: str
    message: str
    transient: bool = False


class AgentJob(BaseModel):
    """One job for the agent to submit, identified by its de-duplication token."""

    model_config = ConfigDict(extra="forbid")

    token: str = Field(pattern=r"^hpcb:[a-z0-9]{1,64}$")
    script: str
    options: dict[str, str | int] = Field(default_factory=dict)

    @classmethod
    def of(cls, token: str, spec: JobSpec) -> AgentJob:
        """Build the agent's view of a validated job spec (options without the script)."""
        options = spec.model_dump(exclude={"script"}, exclude_none=True)
        return cls(token=token, script=spec.script, options=options)


class AgentRequest(BaseModel):
    """What the worker asks of the agent."""

    model_config = ConfigDict(extra="forbid")

    v: int = PROTOCOL_VERSION
    op: AgentOp
    jobs: list[AgentJob] = Field(default_factory=list)
    payload_url: str | None = None
    result_put_url: str | None = None
    inline_limit: int = 20000


class AgentJobResult(BaseModel):
    """The agent's answer for one job: a Slurm job id, or an error."""

    token: str
    job_id: str | None = None
    reused: bool = False
    error: AgentErrorInfo | None = None


class AgentResponse(BaseModel):
    """What the agent answers."""

    v: int = PROTOCOL_VERSION
    ok: bool
    op: str = ""
    results: list[AgentJobResult] = Field(default_factory=list)
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
