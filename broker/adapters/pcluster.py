"""ClusterProvider on ParallelCluster's Python library (``pcluster.lib``).

pcluster is heavy (≈1 s to import, 180 MB with aws-cdk) and pins its own versions of shared
packages, so it is never imported at module import: only inside the methods, in the cluster
worker, which in AWS runs with ParallelCluster's Lambda layer. The API function and the job
worker never load this module's pcluster import (a test checks ``sys.modules``).

How pcluster answers (``cli/src/pcluster/api/errors.py`` and ``pcluster/cli/model.py``):

- results are JSON-shaped dicts in the API's camelCase (``clusterStatus``,
  ``cloudformationStackArn``);
- the configuration must be a **file path** (the ``clusterConfiguration`` parameter is of type
  "file"), so it is written to a private temporary file for the call;
- a successful **dry run raises** ``DryrunOperationException`` (HTTP 412 in the API), whose
  content carries the message, ``validationMessages`` and, for an update, ``changeSet``;
- validators that reject a configuration raise ``CreateClusterBadRequestException`` /
  ``UpdateClusterBadRequestException`` with ``configurationValidationErrors`` (and
  ``updateValidationErrors``); ``BadRequestException`` (and the CLI layer's
  ``ParameterException``) mean a bad request, ``NotFoundException`` an unknown cluster,
  ``ConflictException`` a name taken or a status that forbids the operation — all permanent;
  ``LimitExceededException`` (throttling) and ``InternalServiceException`` are transient.

Exceptions are recognised by class name, so the mapping is tested without pcluster installed.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from broker.adapters.aws import translate
from broker.clusters import (
    ClusterFailure,
    ClusterInfo,
    ClusterStatus,
    ComputeFleetStatus,
    ConfigurationRejectedError,
    ProviderAnswer,
    ValidationMessage,
)
from broker.clusters.models import ClusterMessage
from broker.errors import (
    BrokerError,
    ClusterNotFoundError,
    ConflictError,
    PermanentError,
    ThrottledError,
    TransientError,
)

_LEVELS = {"INFO", "WARNING", "ERROR"}


class PclusterProvider:
    """ClusterProvider through ``pcluster.lib`` (imported lazily, in the calls).

    Args:
        default_region: region when a request names none (pcluster also reads
            ``AWS_DEFAULT_REGION``).
        work_dir: where configuration files are written (Lambda: /tmp).
    """

    def __init__(self, default_region: str | None = None, work_dir: str | None = None) -> None:
        self._region = default_region
        self._work_dir = work_dir

    def create(self, message: ClusterMessage) -> ProviderAnswer:
        """``pcluster.lib.create_cluster`` (a dry run's success comes back as an answer)."""
        with self._configuration(message.configuration or "") as path:
            answer = self._accept(
                "create_cluster",
                cluster_name=message.cluster,
                cluster_configuration=path,
                region=message.region or self._region,
                dryrun=message.dryrun,
                rollback_on_failure=message.rollback_on_failure,
                suppress_validators=message.suppress_validators,
                validation_failure_level=message.validation_failure_level,
            )
        return answer if isinstance(answer, ProviderAnswer) else accepted_answer(answer)

    def update(self, message: ClusterMessage) -> ProviderAnswer:
        """``pcluster.lib.update_cluster``."""
        with self._configuration(message.configuration or "") as path:
            answer = self._accept(
                "update_cluster",
                cluster_name=message.cluster,
                cluster_configuration=path,
                region=message.region or self._region,
                dryrun=message.dryrun,
                force_update=message.force_update,
                suppress_validators=message.suppress_validators,
                validation_failure_level=message.validation_failure_level,
            )
        return answer if isinstance(answer, ProviderAnswer) else accepted_answer(answer)

    def delete(self, name: str, region: str | None) -> ClusterInfo:
        """``pcluster.lib.delete_cluster``."""
        answer = self._call("delete_cluster", cluster_name=name, region=region or self._region)
        return cluster_info(answer.get("cluster", answer))

    def describe(self, name: str, region: str | None) -> ClusterInfo:
        """``pcluster.lib.describe_cluster``."""
        return cluster_info(
            self._call("describe_cluster", cluster_name=name, region=region or self._region)
        )

    def update_compute_fleet(
        self, name: str, status: str, region: str | None
    ) -> ComputeFleetStatus:
        """``pcluster.lib.update_compute_fleet``."""
        answer = self._call(
            "update_compute_fleet", cluster_name=name, status=status, region=region or self._region
        )
        return ComputeFleetStatus(str(answer.get("status", status)))

    def list(self, region: str | None) -> list[ClusterInfo]:
        """``pcluster.lib.list_clusters``, every page."""
        clusters: list[ClusterInfo] = []
        token: str | None = None
        while True:
            answer = self._call("list_clusters", region=region or self._region, next_token=token)
            clusters.extend(cluster_info(c) for c in answer.get("clusters", []))
            token = answer.get("nextToken")
            if not token:
                return clusters

    # -- plumbing ---------------------------------------------------------------------------

    def _accept(self, operation: str, **kwargs: Any) -> dict[str, Any] | ProviderAnswer:
        try:
            return self._call(operation, **kwargs)
        except DryrunSucceeded as success:
            return success.answer

    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        import pcluster.lib as pc  # type: ignore[import-not-found]  # noqa: PLC0415 - heavy, lazy

        arguments = {k: v for k, v in kwargs.items() if v is not None}
        try:
            answer = getattr(pc, operation)(**arguments)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"pcluster {operation}") from exc
        except Exception as exc:
            raise error_of(type(exc).__name__, _content(exc), exc, operation) from exc
        return answer if isinstance(answer, dict) else {}

    @contextmanager
    def _configuration(self, text: str) -> Iterator[str]:
        """The configuration in a private temporary file (pcluster reads a path)."""
        handle, path = tempfile.mkstemp(prefix="hpcb-cluster-", suffix=".yaml", dir=self._work_dir)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(text)
            yield path
        finally:
            os.unlink(path)


class DryrunSucceeded(BrokerError):  # a success, which pcluster signals by raising
    """Internal: pcluster's dry run would have succeeded (carries its answer)."""

    def __init__(self, answer: ProviderAnswer) -> None:
        super().__init__(answer.message or "dry run succeeded")
        self.answer = answer


def _content(exc: Exception) -> dict[str, Any]:
    """An exception's content as the API's JSON (camelCase), whatever pcluster version."""
    content = getattr(exc, "content", None)
    if content is None:
        data = getattr(exc, "data", None)  # the CLI layer's ParameterException/APIOperation
        return dict(data) if isinstance(data, Mapping) else {"message": str(exc)}
    if isinstance(content, Mapping):
        return dict(content)
    try:
        from pcluster.api import encoder  # type: ignore[import-not-found]  # noqa: PLC0415

        decoded = json.loads(encoder.JSONEncoder().encode(content))
    except Exception:  # any encoding trouble: fall back to the model's own dict
        to_dict = getattr(content, "to_dict", None)
        decoded = to_dict() if callable(to_dict) else {"message": str(content)}
    return decoded if isinstance(decoded, dict) else {"message": str(decoded)}


def error_of(  # noqa: PLR0911 - one return per pcluster exception class: a table
    name: str, content: Mapping[str, Any], exc: Exception | None = None, operation: str = ""
) -> BrokerError:
    """The broker error for a pcluster exception (by class name) and its content.

    A dry run's success is returned as ``DryrunSucceeded`` (the caller turns it into an
    answer); everything else is a permanent or transient broker error.
    """
    message = str(content.get("message") or name)
    if name == "DryrunOperationException":
        return DryrunSucceeded(
            ProviderAnswer(
                dryrun=True,
                message=message,
                validation_messages=validation_messages(content.get("validationMessages")),
                change_set=_change_set(content.get("changeSet")),
            )
        )
    if name in ("CreateClusterBadRequestException", "UpdateClusterBadRequestException"):
        findings = validation_messages(content.get("configurationValidationErrors"))
        findings += _update_errors(content.get("updateValidationErrors"))
        return ConfigurationRejectedError(message, findings)
    if name == "NotFoundException":
        return ClusterNotFoundError(message)
    if name == "ConflictException":
        return ConflictError(message)
    if name == "LimitExceededException":
        return ThrottledError(message)
    if name == "InternalServiceException":
        return TransientError(message, code="PCLUSTER_INTERNAL_ERROR")
    if name in ("BadRequestException", "ParameterException", "BuildImageBadRequestException"):
        return PermanentError(message, code="BAD_REQUEST")
    if name == "AWSClientError" and exc is not None:
        # pcluster wraps botocore's ClientError: the same classification as every adapter.
        code = str(getattr(exc, "error_code", "") or "Unknown")
        wrapped = ClientError({"Error": {"Code": code, "Message": str(exc)}}, operation)
        return translate(wrapped, f"pcluster {operation}")
    return PermanentError(f"pcluster {operation} failed: {name}: {message}", code="PCLUSTER_ERROR")


def accepted_answer(answer: Mapping[str, Any]) -> ProviderAnswer:
    """A create/update answer: the cluster summary and the validators' findings."""
    return ProviderAnswer(
        info=cluster_info(answer.get("cluster", answer)),
        validation_messages=validation_messages(answer.get("validationMessages")),
        change_set=_change_set(answer.get("changeSet")),
    )


def cluster_info(data: Mapping[str, Any]) -> ClusterInfo:
    """ClusterInfo of pcluster's cluster summary or describe answer (camelCase)."""
    scheduler = data.get("scheduler")
    head = data.get("headNode") or {}
    fleet = data.get("computeFleetStatus")
    return ClusterInfo(
        name=str(data.get("clusterName", "")),
        region=data.get("region"),
        status=ClusterStatus(str(data.get("clusterStatus", "CREATE_IN_PROGRESS"))),
        version=data.get("version"),
        scheduler=scheduler.get("type") if isinstance(scheduler, Mapping) else None,
        head_node_instance_id=head.get("instanceId") if isinstance(head, Mapping) else None,
        stack_arn=data.get("cloudformationStackArn"),
        created_at=_time(data.get("creationTime")),
        compute_fleet_status=ComputeFleetStatus(str(fleet)) if fleet else None,
        failures=[
            ClusterFailure(
                code=str(f.get("failureCode", "")), reason=str(f.get("failureReason", ""))
            )
            for f in data.get("failures") or []
            if isinstance(f, Mapping)
        ],
    )


def validation_messages(items: Any) -> list[ValidationMessage]:
    """pcluster's ConfigValidationMessage list as structured findings."""
    found: list[ValidationMessage] = []
    for item in items or []:
        if not isinstance(item, Mapping):
            continue
        level = str(item.get("level", "ERROR")).upper()
        found.append(
            ValidationMessage(
                level=level if level in _LEVELS else "ERROR",  # type: ignore[arg-type]
                type=str(item.get("type", "")),
                message=str(item.get("message", "")),
            )
        )
    return found


def _update_errors(items: Any) -> list[ValidationMessage]:
    """An update's refused changes (parameter, current and requested values) as findings."""
    return [
        ValidationMessage(
            level="ERROR",
            type=f"UpdateValidation:{item.get('parameter', '')}",
            message=str(item.get("message", "")),
        )
        for item in items or []
        if isinstance(item, Mapping)
    ]


def _change_set(items: Any) -> list[dict[str, Any]] | None:
    if not isinstance(items, list):
        return None
    return [dict(i) for i in items if isinstance(i, Mapping)]


def _time(value: Any) -> datetime | None:
    """pcluster's ``creationTime`` (a datetime, or ISO 8601 text over JSON); None if absent."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None
