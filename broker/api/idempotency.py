"""``Idempotency-Key`` on every POST, with Powertools' idempotency utility.

A client may send ``Idempotency-Key: <1-128 of [A-Za-z0-9_.:-]>`` with any POST. Within
IDEMPOTENCY_TTL_SECONDS the same key (for the same caller and route) with the same body returns
the original 202 answer (same request id; header ``Idempotent-Replayed: true``) without doing the
work again; the same key with a different body is refused (422 ``IDEMPOTENCY_KEY_REUSED``). A
duplicate arriving while the first is still being accepted waits for it (bounded), then replays.

Records live in their own DynamoDB table (``IdempotencyTable``), keyed by owner, route and key:
two callers never share a key space. A call that fails is not recorded, so it can be retried
with the same key.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from functools import cache
from typing import Any, Literal

from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord
from aws_lambda_powertools.utilities.idempotency.serialization.pydantic import (
    PydanticSerializer,
)
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel

from broker.adapters.aws import client, translate
from broker.batches.models import BatchAccepted
from broker.errors import BrokerError, ConflictError, ValidationError
from broker.schema import AcceptedResponse

#: How long a key is remembered (the records' TTL). Documented: 48 hours.
IDEMPOTENCY_TTL_SECONDS = 48 * 3600
KEY_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
#: How long a duplicate waits for the first call with its key to finish.
IN_PROGRESS_WAIT_SECONDS = 3.0

Route = Literal[
    "submit_job", "cancel_job", "fetch_output", "submit_batch", "submit_sweep",
    "create_cluster", "update_cluster", "cluster_fleet",
]  # fmt: skip
Answer = AcceptedResponse | BatchAccepted


class IdempotentCall(BaseModel):
    """What identifies a call (``scope``) and what must not change under its key (``body``).

    ``args`` carries the path's values (owner, cluster, job id) for running the call; they are
    part of ``scope`` already.
    """

    scope: str
    route: Route
    args: dict[str, str]
    body: Any


_replayed: ContextVar[bool] = ContextVar("idempotency_replayed", default=False)


def _mark_replayed(response: Any, idempotent_data: DataRecord) -> Any:
    """Powertools calls this when it returns a stored answer instead of running the call."""
    _replayed.set(True)
    return response


def was_replayed() -> bool:
    """Whether the last ``accept_once`` in this context returned a stored answer."""
    return _replayed.get()


class IdempotencyKeyReusedError(ValidationError):
    """The key was used before with a different request."""

    code = "IDEMPOTENCY_KEY_REUSED"


class IdempotencyInProgressError(ConflictError):
    """The first call with this key is still running."""

    code = "IDEMPOTENCY_IN_PROGRESS"
    transient = True


_CONFIG = IdempotencyConfig(
    event_key_jmespath="scope",
    payload_validation_jmespath="body",
    raise_on_no_idempotency_key=True,
    expires_after_seconds=IDEMPOTENCY_TTL_SECONDS,
    response_hook=_mark_replayed,
)


def register_lambda_context(context: LambdaContext) -> None:
    """Let in-progress records expire with the invocation (a timed-out one frees its key)."""
    _CONFIG.register_lambda_context(context)


@cache
def _once(table: str, run: Callable[[IdempotentCall], Any], model: type[BaseModel]) -> Any:
    """``run`` wrapped by Powertools' idempotent_function (one persistence layer per function;
    one function per answer model, so stored answers come back as that model)."""
    persistence = DynamoDBPersistenceLayer(table_name=table, boto3_client=client("dynamodb"))

    def accept(call: IdempotentCall) -> Any:
        return run(call)

    return idempotent_function(
        accept,
        data_keyword_argument="call",
        persistence_store=persistence,
        config=_CONFIG,
        output_serializer=PydanticSerializer(model=model),
    )


def accept_once(
    table: str,
    run: Callable[[IdempotentCall], Answer],
    *,
    owner: str,
    key: str,
    route: Route,
    args: dict[str, str],
    body: Any,
    model: type[BaseModel] = AcceptedResponse,
) -> Answer:
    """Run ``run(call)`` at most once per (owner, route, path arguments, key) and body.

    Raises:
        IdempotencyKeyReusedError: the key was used with a different body.
        IdempotencyInProgressError: the first call is still running after a bounded wait.
        BrokerError: whatever ``run`` raises (nothing is remembered then).
    """
    _replayed.set(False)
    path = "/".join(f"{k}={v}" for k, v in sorted(args.items()))
    call = IdempotentCall(scope=f"{owner}|{route}|{path}|{key}", route=route, args=args, body=body)
    accept = _once(table, run, model)
    deadline = time.monotonic() + IN_PROGRESS_WAIT_SECONDS
    while True:
        try:
            return accept(call=call)  # type: ignore[no-any-return]
        except IdempotencyValidationError as exc:
            raise IdempotencyKeyReusedError(
                "this Idempotency-Key was already used with a different request; "
                "use a new key for a new request"
            ) from exc
        except IdempotencyPersistenceLayerError as exc:
            # The key table failed (throttled, 5xx, ...): the same translation as every adapter.
            if isinstance(exc.__cause__, ClientError | BotoCoreError):
                raise translate(exc.__cause__, "Idempotency-Key record") from exc
            raise
        except IdempotencyAlreadyInProgressError as exc:
            if time.monotonic() >= deadline:
                raise IdempotencyInProgressError(
                    "a request with this Idempotency-Key is still being accepted; retry shortly"
                ) from exc
            time.sleep(0.1)


__all__ = [
    "IDEMPOTENCY_TTL_SECONDS",
    "KEY_PATTERN",
    "BrokerError",
    "IdempotencyInProgressError",
    "IdempotencyKeyReusedError",
    "IdempotentCall",
    "accept_once",
    "was_replayed",
]
