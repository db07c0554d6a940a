"""``BrokerClient``: one method per API operation, returning the API's own pydantic models."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from pydantic import BaseModel

from broker.batches.models import MAX_BATCH_BODY_BYTES, MAX_BATCH_ITEMS, BatchAccepted
from broker.client import bulk
from broker.client.config import Settings, resolve
from broker.client.errors import ClientError, NotFoundError, RequestFailedError
from broker.client.polling import Backoff, JobMonitor, Sleep, poll_until
from broker.client.transport import (
    LocalPrincipalSigner,
    Signer,
    SigV4Signer,
    Transport,
    UrllibTransport,
    raise_for_status,
)
from broker.clusters import ClusterStatus
from broker.clusters.models import ClusterList, ClusterView
from broker.jobs.models import JobSpec, OutputResult
from broker.jobs.records import JobList, JobState, JobView
from broker.requests.models import RequestView
from broker.schema import AcceptedResponse, dump
from broker.users.models import MappingList, MappingView

M = TypeVar("M", bound=BaseModel)
JobSpecLike = JobSpec | Mapping[str, Any]
#: Request states after which nothing changes (IN_PROGRESS and the rest are not final).
FINAL_REQUEST_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
FINAL_JOB_STATES = frozenset(s for s in JobState if s.final)
FAILED_CLUSTER_STATES = frozenset(
    {ClusterStatus.CREATE_FAILED, ClusterStatus.UPDATE_FAILED, ClusterStatus.DELETE_FAILED}
)


class BrokerClient:
    """The hpc-broker API, typed.

    ``endpoint`` is the API's base URL (``ApiUrl``, with or without its trailing ``/v1``).
    Calls to a non-local endpoint are SigV4-signed through botocore with ``region`` and
    ``profile`` (``sign=False`` turns that off). Against the local stack, ``principal`` acts as
    that IAM identity (the ``X-Hpcb-Local-Principal`` header). Use :meth:`from_settings` (or
    :meth:`from_environment`) to find the endpoint as the CLI does.

    Writes answer at once with a request id; :meth:`wait`, :meth:`wait_for_job` and
    :meth:`wait_for_cluster` poll with capped exponential back-off and jitter, honouring
    ``Retry-After``. Waits for jobs share one poller per client (one listing call per cluster
    per round). ``transport``, ``sleep`` and ``rng`` are seams for tests.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        region: str | None = None,
        profile: str | None = None,
        principal: str | None = None,
        sign: bool | None = None,
        timeout: float = 30.0,
        backoff: Backoff | None = None,
        transport: Transport | None = None,
        sleep: Sleep = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        endpoint = endpoint.rstrip("/")
        self.endpoint = endpoint.removesuffix("/v1")
        local = Settings(endpoint=endpoint).local
        self._signer: Signer | None = None
        if sign if sign is not None else not local:
            self._signer = SigV4Signer(region=region, profile=profile)
        elif principal:
            self._signer = LocalPrincipalSigner(principal)
        self._transport = transport or UrllibTransport(timeout)
        self.backoff = backoff or Backoff()
        self.sleep = sleep
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self._monitor = JobMonitor(
            self._final_jobs_page, self.get_job, backoff=self.backoff, sleep=sleep, rng=self.rng
        )

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> BrokerClient:
        """A client for resolved settings (see :mod:`broker.client.config`)."""
        if not settings.endpoint:
            raise ClientError(
                "no endpoint: pass --endpoint, set HPCB_ENDPOINT, run `hpcb configure`, "
                "or start the local stack (`hpcb local up`)"
            )
        return cls(
            settings.endpoint,
            region=settings.region,
            profile=settings.profile,
            principal=settings.principal,
            **options,
        )

    @classmethod
    def from_environment(cls, **overrides: Any) -> BrokerClient:
        """A client from arguments, environment, config file, stack or local run file."""
        keys = ("endpoint", "stack", "region", "profile", "principal")
        settings = resolve(**{k: overrides.pop(k) for k in keys if k in overrides})
        return cls.from_settings(settings, **overrides)

    # -- jobs -----------------------------------------------------------------------------------

    def submit_job(
        self, cluster: str, spec: JobSpecLike, *, idempotency_key: str | None = None
    ) -> AcceptedResponse:
        """``POST /v1/clusters/{cluster}/jobs``: queue one job (a dict is sent as it is)."""
        path = f"/v1/clusters/{_seg(cluster)}/jobs"
        return self._model(AcceptedResponse, "POST", path, _spec(spec), idempotency_key)

    def submit_batch(
        self,
        cluster: str,
        specs: Sequence[JobSpecLike],
        *,
        atomic: bool = False,
        pack: bool = False,
        idempotency_key: str | None = None,
    ) -> BatchAccepted:
        """``POST /v1/clusters/{cluster}/jobs:batch``: up to 10,000 jobs in one call (``pack``:
        runs of jobs differing only in their environment go to Slurm as job arrays)."""
        body = {"jobs": [_spec(s) for s in specs], "atomic": atomic, "pack": pack}
        path = f"/v1/clusters/{_seg(cluster)}/jobs:batch"
        return self._model(BatchAccepted, "POST", path, body, idempotency_key)

    def submit_sweep(
        self,
        cluster: str,
        template: JobSpecLike,
        parameters: Sequence[Mapping[str, str]],
        *,
        atomic: bool = False,
        idempotency_key: str | None = None,
    ) -> BatchAccepted:
        """``POST /v1/clusters/{cluster}/jobs:sweep``: one job for up to 100,000 parameter sets
        (each a task's own variables), submitted as Slurm job arrays."""
        body = {"template": _spec(template), "parameters": [dict(p) for p in parameters],
                "atomic": atomic}  # fmt: skip
        path = f"/v1/clusters/{_seg(cluster)}/jobs:sweep"
        return self._model(BatchAccepted, "POST", path, body, idempotency_key)

    def submit_many(
        self,
        cluster: str,
        specs: Sequence[JobSpecLike],
        *,
        concurrency: int = 4,
        max_attempts: int = 8,
        on_batch: Callable[[bulk.BatchOutcome], None] | None = None,
        max_items: int = MAX_BATCH_ITEMS,
        max_bytes: int = MAX_BATCH_BODY_BYTES,
        pack: bool = False,
    ) -> bulk.BulkResult:
        """Any number of jobs, as ``jobs:batch`` calls of at most 10,000 items / 5 MiB each
        (``pack``: as the API's, per call).

        Sent by ``concurrency`` threads; each call has its own Idempotency-Key, kept across
        its retries (429, 5xx, connection drops), so no job is ever accepted twice. Returns
        every item's outcome (see :mod:`broker.client.bulk`).
        """
        path = f"/v1/clusters/{_seg(cluster)}/jobs:batch"

        def post(body: bytes, key: str) -> BatchAccepted:
            answer = self._send("POST", path, body, key)
            return BatchAccepted.model_validate(answer)

        return bulk.submit_many(
            post,
            [s if isinstance(s, JobSpec) else dict(s) for s in specs],
            concurrency=concurrency,
            max_attempts=max_attempts,
            sleep=self.sleep,
            rng=self.rng,
            on_batch=on_batch,
            max_items=max_items,
            max_bytes=max_bytes,
            pack=pack,
        )

    def list_jobs(
        self,
        cluster: str,
        *,
        states: Iterable[JobState | str] | None = None,
        name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        next_token: str | None = None,
    ) -> JobList:
        """``GET /v1/clusters/{cluster}/jobs``: one page of your jobs, newest first."""
        query: list[tuple[str, str]] = [("state", str(s)) for s in states or ()]
        query += [(k, v) for k, v in (("name", name), ("next_token", next_token)) if v]
        query += [(k, v.isoformat()) for k, v in (("since", since), ("until", until)) if v]
        query.append(("limit", str(limit)))
        path = f"/v1/clusters/{_seg(cluster)}/jobs?{urlencode(query)}"
        return self._model(JobList, "GET", path)

    def iter_jobs(self, cluster: str, **filters: Any) -> Iterator[JobView]:
        """Every job :meth:`list_jobs` matches, page after page."""
        token: str | None = None
        while True:
            page = self.list_jobs(cluster, next_token=token, **filters)
            yield from page.jobs
            token = page.next_token
            if not token:
                return

    def get_job(self, cluster: str, job_id: str) -> JobView:
        """``GET /v1/clusters/{cluster}/jobs/{job_id}`` (broker id ``r…`` or Slurm id)."""
        return self._model(JobView, "GET", f"/v1/clusters/{_seg(cluster)}/jobs/{_seg(job_id)}")

    def cancel_job(self, cluster: str, job_id: str) -> AcceptedResponse:
        """``DELETE /v1/clusters/{cluster}/jobs/{job_id}``: cancel (409 if it has ended)."""
        path = f"/v1/clusters/{_seg(cluster)}/jobs/{_seg(job_id)}"
        return self._model(AcceptedResponse, "DELETE", path)

    def fetch_output(
        self,
        cluster: str,
        job_id: str,
        *,
        stream: str = "both",
        offset: int | None = None,
        max_bytes: int | None = None,
        task: int | None = None,
        idempotency_key: str | None = None,
    ) -> AcceptedResponse:
        """``POST /v1/clusters/{cluster}/jobs/{job_id}/output``: queue an output read."""
        query = {"stream": stream, "offset": offset, "max_bytes": max_bytes, "task": task}
        body = {k: v for k, v in query.items() if v is not None}
        path = f"/v1/clusters/{_seg(cluster)}/jobs/{_seg(job_id)}/output"
        return self._model(AcceptedResponse, "POST", path, body, idempotency_key)

    def output(
        self, cluster: str, job_id: str, *, timeout: float = 120.0, **query: Any
    ) -> OutputResult:
        """Fetch a job's output and wait for it (see :meth:`fetch_output` for ``query``).

        Raises:
            RequestFailedError: the fetch request FAILED (e.g. 409: not in Slurm yet).
        """
        accepted = self.fetch_output(cluster, job_id, **query)
        request = self.wait(accepted.request_id, timeout=timeout)
        if request.state != "SUCCEEDED" or not isinstance(request.result, OutputResult):
            raise RequestFailedError(request)
        return request.result

    # -- requests -------------------------------------------------------------------------------

    def get_request(
        self, request_id: str, *, items_from: int = 0, items_limit: int = 100
    ) -> RequestView:
        """``GET /v1/requests/{request_id}``; a batch's with a page of its items."""
        query = urlencode({"items_from": items_from, "items_limit": items_limit})
        return self._model(RequestView, "GET", f"/v1/requests/{_seg(request_id)}?{query}")

    def wait(
        self,
        request_id: str,
        *,
        timeout: float = 120.0,
        first_poll: float | None = None,
        max_poll: float | None = None,
    ) -> RequestView:
        """Poll a request until it is final (SUCCEEDED, FAILED, CANCELLED); returns it.

        Raises:
            WaitTimeoutError: not final within ``timeout`` seconds.
            NotFoundError: no such request, or not yours.
        """
        return poll_until(  # type: ignore[no-any-return]
            lambda: self.get_request(request_id, items_limit=0),
            lambda r: r.state in FINAL_REQUEST_STATES,
            what=f"request {request_id}",
            timeout=timeout,
            backoff=self.poll_backoff(first_poll, max_poll),
            sleep=self.sleep,
            rng=self.rng,
        )

    def wait_for_job(self, cluster: str, job_id: str, *, timeout: float = 600.0) -> JobView:
        """Wait until a job is final; returns its view.

        Every waiting thread shares the client's one poller: one listing call per cluster per
        round, whatever the number of jobs awaited.

        Raises:
            WaitTimeoutError: not final within ``timeout`` seconds.
        """
        return self._monitor.wait(cluster, job_id, timeout)

    def _final_jobs_page(self, cluster: str, token: str | None, since: datetime | None) -> JobList:
        return self.list_jobs(
            cluster, states=FINAL_JOB_STATES, since=since, limit=200, next_token=token
        )

    # -- clusters -------------------------------------------------------------------------------

    def create_cluster(
        self,
        name: str,
        configuration: str,
        *,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> AcceptedResponse:
        """``POST /v1/clusters``; ``options``: region, dryrun, rollback_on_failure,
        suppress_validators, validation_failure_level."""
        body = {"name": name, "configuration": configuration, **_set(options)}
        return self._model(AcceptedResponse, "POST", "/v1/clusters", body, idempotency_key)

    def update_cluster(
        self,
        name: str,
        configuration: str,
        *,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> AcceptedResponse:
        """``PUT /v1/clusters/{name}``; ``options``: region, dryrun, force_update, …"""
        body = {"configuration": configuration, **_set(options)}
        path = f"/v1/clusters/{_seg(name)}"
        return self._model(AcceptedResponse, "PUT", path, body, idempotency_key)

    def delete_cluster(self, name: str) -> AcceptedResponse:
        """``DELETE /v1/clusters/{name}``."""
        return self._model(AcceptedResponse, "DELETE", f"/v1/clusters/{_seg(name)}")

    def list_clusters(self, *, limit: int = 50, next_token: str | None = None) -> ClusterList:
        """``GET /v1/clusters``: one page of your clusters, by name."""
        query = urlencode({"limit": limit, **({"next_token": next_token} if next_token else {})})
        return self._model(ClusterList, "GET", f"/v1/clusters?{query}")

    def get_cluster(self, name: str) -> ClusterView:
        """``GET /v1/clusters/{name}`` from the broker's record."""
        return self._model(ClusterView, "GET", f"/v1/clusters/{_seg(name)}")

    def refresh_cluster(self, name: str) -> AcceptedResponse:
        """``GET /v1/clusters/{name}?refresh=true``: queue a describe through ParallelCluster."""
        return self._model(AcceptedResponse, "GET", f"/v1/clusters/{_seg(name)}?refresh=true")

    def set_fleet(
        self, name: str, status: str, *, idempotency_key: str | None = None
    ) -> AcceptedResponse:
        """``POST /v1/clusters/{name}/fleet``: START_REQUESTED or STOP_REQUESTED."""
        path = f"/v1/clusters/{_seg(name)}/fleet"
        return self._model(AcceptedResponse, "POST", path, {"status": status}, idempotency_key)

    def wait_for_cluster(
        self, name: str, status: str | Iterable[str], *, timeout: float = 3600.0
    ) -> ClusterView:
        """Poll a cluster until its status is one of ``status`` or a ``*_FAILED`` one.

        Waiting for ``DELETE_COMPLETE`` also ends when the cluster is gone (404): its view is
        then a synthesized ``DELETE_COMPLETE`` one built from the last view read.

        Raises:
            WaitTimeoutError: neither within ``timeout`` seconds.
        """
        wanted = {status} if isinstance(status, str) else set(status)
        stops = wanted | {s.value for s in FAILED_CLUSTER_STATES}
        last: list[ClusterView] = []

        def read() -> ClusterView:
            try:
                view = self.get_cluster(name)
            except NotFoundError:
                if ClusterStatus.DELETE_COMPLETE.value not in wanted or not last:
                    raise
                view = last[-1].model_copy(update={"status": ClusterStatus.DELETE_COMPLETE})
            last.append(view)
            return view

        return poll_until(  # type: ignore[no-any-return]
            read,
            lambda v: str(v.status) in stops,
            what=f"cluster {name} to reach {'/'.join(sorted(wanted))}",
            timeout=timeout,
            backoff=self.backoff,
            sleep=self.sleep,
            rng=self.rng,
        )

    # -- plumbing -------------------------------------------------------------------------------

    # -- admin: caller-to-user mappings (HPCB_ADMIN_PRINCIPALS only; 404 for anyone else) ------

    def map_user(
        self, cluster: str, principal: str, user: str, uid: int | None = None
    ) -> MappingView:
        """``PUT /v1/admin/clusters/{cluster}/users``: ``principal`` runs as ``user`` there."""
        body = {"principal": principal, "user": user, **({"uid": uid} if uid else {})}
        return self._model(MappingView, "PUT", f"/v1/admin/clusters/{_seg(cluster)}/users", body)

    def unmap_user(self, cluster: str, principal: str) -> MappingView:
        """``DELETE /v1/admin/clusters/{cluster}/users?principal=...``."""
        query = urlencode({"principal": principal})
        return self._model(
            MappingView, "DELETE", f"/v1/admin/clusters/{_seg(cluster)}/users?{query}"
        )

    def list_user_mappings(
        self, cluster: str, *, principal: str | None = None, limit: int = 50,
        next_token: str | None = None,
    ) -> MappingList:  # fmt: skip
        """``GET /v1/admin/clusters/{cluster}/users``: a page of mappings (or one principal's)."""
        params: dict[str, Any] = {"limit": limit}
        if principal:
            params["principal"] = principal
        if next_token:
            params["next_token"] = next_token
        path = f"/v1/admin/clusters/{_seg(cluster)}/users?{urlencode(params)}"
        return self._model(MappingList, "GET", path)

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document (``GET /v1/openapi.json``)."""
        return self.call("GET", "/v1/openapi.json")

    def call(
        self, method: str, path: str, body: Any = None, *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """One call, untyped: the decoded JSON body, or the matching ApiError."""
        data = None if body is None else json.dumps(body).encode()
        answer = self._send(method, path, data, idempotency_key)
        return dict(answer) if isinstance(answer, dict) else {"value": answer}

    def _model(
        self,
        model: type[M],
        method: str,
        path: str,
        body: Any = None,
        idempotency_key: str | None = None,
    ) -> M:
        data = None if body is None else json.dumps(body).encode()
        return model.model_validate(self._send(method, path, data, idempotency_key))

    def _send(self, method: str, path: str, data: bytes | None, key: str | None) -> Any:
        url = self.endpoint + path
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if key:
            headers["Idempotency-Key"] = key
        if self._signer is not None:
            headers = self._signer.headers(method, url, data, headers)
        return raise_for_status(self._transport.send(method, url, data, headers))

    def poll_backoff(self, first: float | None, cap: float | None) -> Backoff:
        """The client's back-off with another first delay and cap (None: the client's)."""
        if first is None and cap is None:
            return self.backoff
        return Backoff(
            first=first if first is not None else self.backoff.first,
            cap=cap if cap is not None else self.backoff.cap,
            multiplier=self.backoff.multiplier,
            jitter=self.backoff.jitter,
        )


def _seg(value: str) -> str:
    """A path segment, percent-encoded (ids and names are validated by the API)."""
    return quote(value, safe="")


def _spec(spec: JobSpecLike) -> dict[str, Any]:
    return dump(spec) if isinstance(spec, JobSpec) else dict(spec)


def _set(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}
