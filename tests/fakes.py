"""In-memory fakes of the ports, for tests that need no AWS and no Slurm.

The request store fake follows the same transition table as the DynamoDB adapter; the contract
tests in tests/functional/test_request_store.py run the same cases against both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from broker.agent.protocol import AgentJobResult, AgentRequest, AgentResponse
from broker.errors import ClusterNotFoundError, ConflictError, NotFoundError
from broker.models import ErrorInfo, JobResult, JobSubmitMessage, RequestRecord, utcnow
from broker.ports import ClusterTarget, CommandRunner
from broker.states import RequestState, can_transition


class InMemoryRequestStore:
    """RequestStore with the adapter's conditional semantics, in a dict."""

    def __init__(self) -> None:
        self.records: dict[str, RequestRecord] = {}

    def create(self, record: RequestRecord) -> None:
        if record.request_id in self.records:
            raise ConflictError(f"request {record.request_id} exists already")
        self.records[record.request_id] = record

    def get(self, request_id: str) -> RequestRecord:
        try:
            return self.records[request_id]
        except KeyError:
            raise NotFoundError(f"no request {request_id}") from None

    def _move(self, request_id: str, new: RequestState, **changes: object) -> RequestRecord | None:
        current = self.get(request_id)
        if not can_transition(current.state, new):
            return None
        updated = current.model_copy(update={"state": new, "updated_at": utcnow(), **changes})
        self.records[request_id] = updated
        return updated

    def mark_dispatched(self, request_id: str) -> RequestRecord | None:
        current = self.get(request_id)
        return self._move(request_id, RequestState.DISPATCHED, attempts=current.attempts + 1)

    def record_success(self, request_id: str, result: JobResult) -> bool:
        return self._move(request_id, RequestState.SUCCEEDED, result=result, error=None) is not None

    def record_failure(self, request_id: str, error: ErrorInfo) -> bool:
        return self._move(request_id, RequestState.FAILED, error=error) is not None

    def record_retry(self, request_id: str, error: ErrorInfo) -> None:
        current = self.get(request_id)
        if not current.state.final:
            self.records[request_id] = current.model_copy(update={"error": error})


@dataclass
class FakeQueue:
    """RequestQueue that keeps what was sent; can be told to fail."""

    sent: list[JobSubmitMessage] = field(default_factory=list)
    delays: list[tuple[str, str, int]] = field(default_factory=list)
    fail_with: Exception | None = None

    def send(self, message: JobSubmitMessage) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append(message)

    def delay_retry(self, event_source_arn: str, receipt_handle: str, seconds: int) -> None:
        self.delays.append((event_source_arn, receipt_handle, seconds))


@dataclass
class FakeDirectory:
    """ClusterDirectory knowing a fixed set of local clusters."""

    names: frozenset[str] = frozenset({"local"})
    mode: Literal["ssm", "local"] = "local"

    def resolve(self, cluster: str) -> ClusterTarget:
        if cluster not in self.names:
            raise ClusterNotFoundError(f"no cluster named {cluster!r}")
        return ClusterTarget(name=cluster, mode=self.mode, instance_id="i-0123456789abcdef0")


@dataclass
class ScriptedRunner:
    """CommandRunner that answers from a script of responses or exceptions, and records calls."""

    answers: list[AgentResponse | Exception] = field(default_factory=list)
    calls: list[AgentRequest] = field(default_factory=list)

    def run(self, target: ClusterTarget, request: AgentRequest) -> AgentResponse:
        self.calls.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def runner_for(self, mode: Literal["ssm", "local"]) -> CommandRunner:
        return self


def submitted(token: str, job_id: str = "42", *, reused: bool = False) -> AgentResponse:
    """An agent answer: the job with ``token`` is Slurm job ``job_id``."""
    return AgentResponse(
        ok=True, op="submit", results=[AgentJobResult(token=token, job_id=job_id, reused=reused)]
    )
