"""Every API write as a typed command: what it needs (the caller, the path's values, the validated
body), the service call that accepts it, and its answer.

A route builds its command from its validated parameters and hands it to ``write``. With an
``Idempotency-Key`` the command travels through Powertools' idempotency layer as plain data (its
``route``, path ``args`` and JSON ``body``: the fingerprint a retried call is recognised by; see
``tests/unit/test_api_write_fingerprints.py``) and is rebuilt from that data to run, once. A new
write route is one new command class here and its route function; nothing dispatches on names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from aws_lambda_powertools.event_handler import Response
from pydantic import BaseModel, ConfigDict

from broker.api import services
from broker.api.common import accepted, accepted_body
from broker.api.idempotency import Answer, IdempotentCall, Route, accept_once, was_replayed
from broker.batches.models import BatchAccepted, BatchBody
from broker.batches.sweeps import SweepBody
from broker.clusters.models import ClusterCreateBody, ClusterUpdateBody, FleetBody
from broker.errors import ValidationError
from broker.jobs.models import JobSpec, OutputQueryBody
from broker.schema import AcceptedResponse, dump
from broker.settings import api_settings

#: Each write's command class, by the route name its idempotency records carry.
WRITES: dict[str, type[Write]] = {}


class Write(BaseModel, ABC):
    """One accepted write: the caller, the path's values and the validated body."""

    model_config = ConfigDict(frozen=True)

    #: The name the write's idempotency records carry (never change it: it is in the stored keys).
    route: ClassVar[Route]
    #: The 202 answer's model.
    answer: ClassVar[type[Answer]] = AcceptedResponse
    #: The fields that come from the request's path (besides the owner).
    path: ClassVar[tuple[str, ...]] = ()
    #: The field that holds the request's body, if any.
    body_field: ClassVar[str | None] = None

    owner: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        WRITES[cls.route] = cls

    def args(self) -> dict[str, str]:
        """The owner and the path's values (part of an Idempotency-Key's scope)."""
        return {"owner": self.owner, **{name: getattr(self, name) for name in self.path}}

    def body(self) -> Any:
        """The body as JSON data (what a replay under the same key must repeat), or None."""
        return dump(getattr(self, self.body_field)) if self.body_field else None

    @classmethod
    def of_call(cls, call: IdempotentCall) -> Write:
        """The command again, from the data it travelled as."""
        values: dict[str, Any] = dict(call.args)
        if cls.body_field:
            values[cls.body_field] = call.body
        return cls.model_validate(values)

    @abstractmethod
    def run(self) -> Answer:
        """Accept the write (record, enqueue) and return its 202 body."""


class SubmitJob(Write):
    """``POST /v1/clusters/{cluster}/jobs``."""

    route = "submit_job"
    path = ("cluster",)
    body_field = "spec"
    cluster: str
    spec: JobSpec

    def run(self) -> Answer:
        record = services.request_service().submit_job(self.owner, self.cluster, self.spec)
        return accepted_body(record.request_id)


class SubmitBatch(Write):
    """``POST /v1/clusters/{cluster}/jobs:batch``."""

    route = "submit_batch"
    answer = BatchAccepted
    path = ("cluster",)
    body_field = "batch"
    cluster: str
    batch: BatchBody

    def run(self) -> Answer:
        return services.request_service().submit_batch(self.owner, self.cluster, self.batch)


class SubmitSweep(Write):
    """``POST /v1/clusters/{cluster}/jobs:sweep``."""

    route = "submit_sweep"
    answer = BatchAccepted
    path = ("cluster",)
    body_field = "sweep"
    cluster: str
    sweep: SweepBody

    def run(self) -> Answer:
        return services.request_service().submit_sweep(self.owner, self.cluster, self.sweep)


class CancelJob(Write):
    """``DELETE /v1/clusters/{cluster}/jobs/{job_id}``."""

    route = "cancel_job"
    path = ("cluster", "job_id")
    cluster: str
    job_id: str

    def run(self) -> Answer:
        record = services.request_service().cancel_job(self.owner, self.cluster, self.job_id)
        return accepted_body(record.request_id)


class FetchOutput(Write):
    """``POST /v1/clusters/{cluster}/jobs/{job_id}/output``."""

    route = "fetch_output"
    path = ("cluster", "job_id")
    body_field = "query"
    cluster: str
    job_id: str
    query: OutputQueryBody

    def run(self) -> Answer:
        service = services.request_service()
        record = service.fetch_output(self.owner, self.cluster, self.job_id, self.query)
        return accepted_body(record.request_id)


class CreateCluster(Write):
    """``POST /v1/clusters``."""

    route = "create_cluster"
    body_field = "create"
    create: ClusterCreateBody

    def run(self) -> Answer:
        record = services.cluster_service().create(self.owner, self.create)
        return accepted_body(record.request_id)


class UpdateCluster(Write):
    """``PUT /v1/clusters/{cluster}``."""

    route = "update_cluster"
    path = ("cluster",)
    body_field = "update"
    cluster: str
    update: ClusterUpdateBody

    def run(self) -> Answer:
        record = services.cluster_service().update(self.owner, self.cluster, self.update)
        return accepted_body(record.request_id)


class ClusterFleet(Write):
    """``POST /v1/clusters/{cluster}/fleet``."""

    route = "cluster_fleet"
    path = ("cluster",)
    body_field = "fleet"
    cluster: str
    fleet: FleetBody

    def run(self) -> Answer:
        record = services.cluster_service().fleet(self.owner, self.cluster, self.fleet)
        return accepted_body(record.request_id)


def _perform(call: IdempotentCall) -> Answer:
    """Run a write that travelled through the idempotency layer (one stable function, so
    Powertools keeps one persistence layer per answer model)."""
    return WRITES[call.route].of_call(call).run()


def write(command: Write, idempotency_key: str | None) -> Response[Any]:
    """Run a write once, or at most once per Idempotency-Key when the caller sent one.

    Raises:
        ValidationError: a key was sent to a deployment without an idempotency table.
        BrokerError: whatever the accepting service raises.
    """
    if idempotency_key is None:
        return accepted(command.run())
    table = api_settings().idempotency_table
    if not table:
        raise ValidationError("Idempotency-Key is not supported by this deployment")
    answer = accept_once(
        table,
        _perform,
        owner=command.owner,
        key=idempotency_key,
        route=command.route,
        args=command.args(),
        body=command.body(),
        model=command.answer,
    )
    return accepted(answer, replayed=was_replayed())
