"""Fault injection for chaos runs of the local stack. Never enabled by the broker itself.

Only the chaos harness (``bench/chaos.py``) builds a :class:`FaultInjector` and attaches it:

* **AWS errors** through botocore's ``before-call`` event on the clients the broker builds
  (``broker.adapters.aws.client``) and on the stack's SQS pollers: a handler that returns a
  response short-circuits the call, so the broker sees the error as it would once botocore's own
  retries had given up (the same mechanism as ``botocore.stub.Stubber``). DynamoDB:
  ``ProvisionedThroughputExceededException``, ``ThrottlingException``, and
  ``TransactionCanceledException`` with a ``TransactionConflict`` or a ``ThrottlingError``
  reason; SQS: ``ServiceUnavailable`` on sends, receives, deletes and visibility changes.
* **Runner timeouts with an unknown outcome**: the head-node command runs to its end, then the
  answer is lost (``RunnerTimeoutError``), as when SSM's wait runs out just after ``sbatch``.
* **A poison request**: every submission of a script holding ``poison_marker`` fails with a
  transient error, for ever, so its message can only end in the DLQ (a look-up, which submits
  nothing, is not poisoned).

Decisions are drawn from one seeded generator per fault kind. Each kind fires once at a seeded
ordinal of its eligible calls (so a run of enough calls sees every kind), then at its rate. The
threads of the stack interleave differently from run to run, so the same seed gives the same
plan, not necessarily the same calls.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from botocore.awsrequest import AWSResponse

from broker.agent.protocol import AgentRequest, AgentResponse
from broker.errors import RunnerTimeoutError, TransientError
from broker.ports import ClusterTarget
from broker.runners.local import LocalRunner

__all__ = ["AWS_FAULTS", "POISON", "RUNNER_TIMEOUT", "AwsFault", "FaultInjector"]

RUNNER_TIMEOUT: Final = "runner.timeout_after_run"
POISON: Final = "poison"


@dataclass(frozen=True)
class AwsFault:
    """One kind of AWS error: where it can happen and what the answer looks like."""

    kind: str
    service: str
    code: str
    status: int = 400
    operations: frozenset[str] | None = None  # None: every operation of the service
    reason: str | None = None  # TransactionCanceledException: the reason of one item

    def applies(self, service: str, operation: str) -> bool:
        """Whether this fault can answer ``operation`` of ``service``."""
        return self.service == service and (self.operations is None or operation in self.operations)

    def response(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The parsed error response botocore turns into the ClientError."""
        parsed: dict[str, Any] = {
            "Error": {"Code": self.code, "Message": f"injected by the chaos harness ({self.kind})"},
            "ResponseMetadata": {"HTTPStatusCode": self.status, "HTTPHeaders": {}},
        }
        if self.reason is not None:
            items = len(params.get("TransactItems", [])) or 1
            # Real DynamoDB lists one reason per item, "None" for the items that were fine.
            reasons = [{"Code": "None"}] * items
            reasons[random.Random(items).randrange(items)] = {  # noqa: S311 - not crypto
                "Code": self.reason,
                "Message": f"injected {self.reason}",
            }
            parsed["CancellationReasons"] = reasons
            parsed["Error"]["Message"] = (
                f"Transaction cancelled, please refer cancellation reasons for specific reasons "
                f"[{', '.join(r['Code'] for r in reasons)}]"
            )
        return parsed


_TRANSACT: Final = frozenset({"TransactWriteItems"})

#: Every AWS fault kind a chaos run injects.
AWS_FAULTS: Final = (
    AwsFault("dynamodb.ProvisionedThroughputExceededException", "dynamodb",
             "ProvisionedThroughputExceededException"),
    AwsFault("dynamodb.ThrottlingException", "dynamodb", "ThrottlingException"),
    AwsFault("dynamodb.TransactionCanceled.TransactionConflict", "dynamodb",
             "TransactionCanceledException", operations=_TRANSACT, reason="TransactionConflict"),
    AwsFault("dynamodb.TransactionCanceled.ThrottlingError", "dynamodb",
             "TransactionCanceledException", operations=_TRANSACT, reason="ThrottlingError"),
    AwsFault("sqs.SendMessageBatch.ServiceUnavailable", "sqs", "ServiceUnavailable", 503,
             frozenset({"SendMessageBatch", "SendMessage"})),
    AwsFault("sqs.ReceiveMessage.ServiceUnavailable", "sqs", "ServiceUnavailable", 503,
             frozenset({"ReceiveMessage"})),
    AwsFault("sqs.DeleteMessageBatch.ServiceUnavailable", "sqs", "ServiceUnavailable", 503,
             frozenset({"DeleteMessageBatch"})),
    AwsFault("sqs.ChangeMessageVisibility.ServiceUnavailable", "sqs", "ServiceUnavailable", 503,
             frozenset({"ChangeMessageVisibility"})),
)  # fmt: skip


class FaultInjector:
    """Seeded fault decisions and counts, shared by every hook of one chaos run.

    Args:
        seed: seeds every decision.
        rates: probability per eligible call, by fault kind (absent: 0 after the first).
        first_within: each kind fires first at a seeded ordinal in ``1..first_within`` of its
            eligible calls (0: only by rate).
    """

    def __init__(self, seed: int, rates: Mapping[str, float], *, first_within: int = 0) -> None:
        self.seed = seed
        self.rates = dict(rates)
        self.enabled = False
        self.injected: Counter[str] = Counter()
        #: A line whose presence in a job's script makes its submission fail, always.
        self.poison_marker: str | None = None
        self._lock = threading.Lock()
        self._eligible: Counter[str] = Counter()
        self._rngs: dict[str, random.Random] = {}
        self._first: dict[str, int] = {}
        for kind in sorted({*self.rates, *(f.kind for f in AWS_FAULTS), RUNNER_TIMEOUT}):
            rng = random.Random(f"{seed}:{kind}")  # noqa: S311 - reproducible, not crypto
            self._rngs[kind] = rng
            self._first[kind] = rng.randint(1, first_within) if first_within > 0 else 0
        self._runner_original: Callable[..., AgentResponse] | None = None

    # -- decisions -------------------------------------------------------------------------

    def due(self, kind: str) -> bool:
        """Whether this eligible call of ``kind`` fails (counted when it does)."""
        if not self.enabled:
            return False
        with self._lock:
            self._eligible[kind] += 1
            fire = self._eligible[kind] == self._first.get(kind, 0) or (
                self._rngs[kind].random() < self.rates.get(kind, 0.0)
            )
            if fire:
                self.injected[kind] += 1
            return fire

    def count(self, kind: str) -> None:
        """Count a fault injected outside this object (a killed worker, a restarted daemon)."""
        with self._lock:
            self.injected[kind] += 1

    def report(self) -> dict[str, int]:
        """Faults injected so far, by kind."""
        with self._lock:
            return dict(sorted(self.injected.items()))

    # -- AWS -------------------------------------------------------------------------------

    def attach(self, clients: Iterable[Any]) -> None:
        """Hook ``before-call`` of each boto3 client (DynamoDB and SQS calls can fail)."""
        for client in clients:
            client.meta.events.register("before-call", self._before_call)

    def _before_call(
        self, model: Any, params: Mapping[str, Any], **_: Any
    ) -> tuple[AWSResponse, dict[str, Any]] | None:
        service, operation = model.service_model.endpoint_prefix, model.name
        for fault in AWS_FAULTS:
            if fault.applies(service, operation) and self.due(fault.kind):
                http = AWSResponse("http://chaos.invalid/", fault.status, {}, None)
                return http, fault.response(params)
        return None

    # -- head-node commands ------------------------------------------------------------------

    def attach_runner(self) -> None:
        """Wrap ``LocalRunner.run``: poison submissions fail; some answers are lost."""
        if self._runner_original is not None:
            return
        original = LocalRunner.run
        self._runner_original = original
        injector = self

        def run(runner: LocalRunner, target: ClusterTarget, request: AgentRequest) -> AgentResponse:
            marker = injector.poison_marker
            poisoned = any(marker in job.script for job in request.jobs) if marker else False
            # A look-up (find_only) submits nothing: only a submission is poisoned.
            if poisoned and injector.enabled and not request.find_only:
                injector.count(POISON)
                raise TransientError(
                    "injected by the chaos harness: a poison submission", code="CHAOS_POISON"
                )
            if request.op != "submit" or not injector.due(RUNNER_TIMEOUT):
                return original(runner, target, request)
            original(runner, target, request)  # it ran; its answer is lost
            raise RunnerTimeoutError("injected by the chaos harness: the answer was lost")

        LocalRunner.run = run  # type: ignore[method-assign,assignment]

    def detach_runner(self) -> None:
        """Put ``LocalRunner.run`` back."""
        if self._runner_original is not None:
            LocalRunner.run = self._runner_original  # type: ignore[method-assign]
            self._runner_original = None
