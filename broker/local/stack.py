"""The whole broker on one machine: moto for AWS, the real handlers, pollers for the queues.

:class:`LocalStack` reads ``template.yaml`` and

1. starts (or reuses, see below) a moto server on 127.0.0.1, in a process of its own
   (:mod:`broker.local.moto_process`: moto gets its own core and GIL), and points boto3 at it
   through the process environment (``AWS_ENDPOINT_URL``, region, fake credentials);
2. provisions the template's queues, table, bucket and topics in it;
3. sets the process environment to the union of every function's resolved environment plus
   overrides (every handler runs in this one process, so their environments must agree);
4. imports each handler by its ``Handler`` string — after step 3, because handlers read their
   settings at cold start;
5. serves the ``Api`` functions with :class:`~broker.local.apigw.ApiGatewayApp` on a threaded
   werkzeug server, runs one :class:`~broker.local.pollers.SqsPoller` per ``SQS`` event and one
   :class:`~broker.local.scheduler.ScheduledInvoker` per ``Schedule``/``ScheduleV2`` event
   (at the template's rate, or every ``schedule_seconds``; :meth:`LocalStack.trigger` runs one
   invocation on demand);
6. subscribes a local inbox queue (``<prefix>-notifications``, see
   :mod:`broker.local.notifications`) to every SNS topic of the template, so what the functions
   publish can be read (:attr:`LocalStack.notifications_queue_url`).

``stop()`` undoes it: schedules, pollers and API server stop, moto is reset, the environment is
restored.

One moto server per process, reused across start/stop
-------------------------------------------------------
Handler modules are imported once per process, and what they build at cold start (boto3 clients,
settings) keeps the endpoint URL it saw. So a second ``LocalStack`` in the same process (the next
pytest test) must see AWS at the same URL: with ``moto_port=0`` the first start picks a free port
and later starts reuse that server, resetting its state (``POST /moto-api/reset``) instead of
starting a new one. Physical names are deterministic, so the resolved environment is identical
too. Only one ``LocalStack`` may run at a time in a process.
"""

from __future__ import annotations

import importlib
import ipaddress
import logging
import os
import sys
import threading
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import boto3
from werkzeug.serving import BaseWSGIServer, make_server

from broker.local import moto_process
from broker.local.apigw import (
    DEFAULT_PRINCIPAL,
    ApiGatewayApp,
    ApiRoute,
    QuietRequestHandler,
    RawHeadersRequestHandler,
)
from broker.local.notifications import Inbox, create_inbox
from broker.local.pollers import SqsPoller
from broker.local.provision import Provisioned, provision
from broker.local.scheduler import ScheduledInvoker, ScheduleStats
from broker.local.template import (
    DEFAULT_NAME_PREFIX,
    FunctionDef,
    LocalStackError,
    Template,
    api_stage,
    load_template,
    local_api_id,
    physical_name,
    read_functions,
)

__all__ = ["DEFAULT_TEMPLATE", "LocalStack", "moto_cpu_seconds", "shutdown_moto_servers"]

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE: Final = Path(__file__).resolve().parents[2] / "template.yaml"
DEFAULT_REGION: Final = "us-east-1"
_LOOPBACK_NAMES: Final = frozenset({"localhost"})
_FAKE_CREDENTIALS: Final = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# Anything that could send boto3 somewhere else, or sign with someone's real session.
_UNSET_AWS_ENV: Final = (
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
)
_STOP_TIMEOUT_S: Final = 10.0

Handler = Callable[[dict[str, Any], Any], Any]

_moto_lock = threading.Lock()
_moto_servers: dict[int, Any] = {}
_active: LocalStack | None = None


def _moto_server(port: int) -> int:
    """A running moto process on 127.0.0.1 (``port`` 0: any existing one, else a free port)."""
    with _moto_lock:
        if port == 0 and _moto_servers:
            existing: int = min(_moto_servers)
            return existing
        if port in _moto_servers:
            return port
        process, actual = moto_process.spawn(port)
        _moto_servers[actual] = process
        logger.info("moto server on http://127.0.0.1:%d (pid %d)", actual, process.pid)
        return actual


def shutdown_moto_servers() -> None:
    """Stop every moto process this process started (they also die with it)."""
    with _moto_lock:
        for process in _moto_servers.values():
            process.terminate()
            process.wait(timeout=10)
        _moto_servers.clear()


def moto_cpu_seconds() -> float:
    """CPU seconds used so far by the moto processes this process started (benchmarks)."""
    with _moto_lock:
        return sum(moto_process.cpu_seconds(p) for p in _moto_servers.values())


def _reset_moto(moto_url: str) -> None:
    request = urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our 127.0.0.1
        response.read()


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LocalStack:
    """The broker's functions, queues and table running in this process against moto.

    Args:
        template_path: the SAM template (default: the repository's ``template.yaml``).
        api_host: where the API listens; loopback only unless ``allow_remote`` (the local
            principal header lets any caller act as anyone).
        api_port: API port (0: a free one; see :attr:`api_url`).
        moto_port: moto port (0: reuse this process's moto server, or start one on a free port).
        env_overrides: environment applied on top of the functions' (e.g.
            ``HPCB_CLUSTERS_MODE=local``).
        principal: the caller's IAM ARN when a request has no ``X-Hpcb-Local-Principal``.
        pollers_per_mapping: threads per SQS event source mapping.
        parameter_overrides: values for template parameters (else their defaults).
        region: the AWS region of everything.
        name_prefix: prefix of physical names (``<prefix>-<LogicalId>``).
        poll_wait_seconds: long-poll wait of the pollers (short: ``stop()`` waits for it).
        access_log: log one line per API request.
        allow_remote: permit a non-loopback ``api_host``.
        schedule_seconds: seconds between the ticks of every recurring schedule (``None``: each
            schedule's own rate or cron).
        schedules_enabled: run the schedules' timers; without them only :meth:`trigger`
            invokes the scheduled functions (for tests).
        notifications_inbox: subscribe the ``<prefix>-notifications`` queue to every SNS topic.
    """

    def __init__(
        self,
        template_path: str | Path | None = None,
        *,
        api_host: str = "127.0.0.1",
        api_port: int = 0,
        moto_port: int = 0,
        env_overrides: Mapping[str, str] | None = None,
        principal: str = DEFAULT_PRINCIPAL,
        pollers_per_mapping: int = 1,
        parameter_overrides: Mapping[str, str] | None = None,
        region: str = DEFAULT_REGION,
        name_prefix: str = DEFAULT_NAME_PREFIX,
        poll_wait_seconds: int = 1,
        access_log: bool = True,
        allow_remote: bool = False,
        schedule_seconds: float | None = None,
        schedules_enabled: bool = True,
        notifications_inbox: bool = True,
    ) -> None:
        if not allow_remote and not _is_loopback(api_host):
            raise ValueError(
                f"api_host {api_host!r} is not loopback: the local API trusts a header for the "
                "caller's identity; pass allow_remote=True if you really mean it"
            )
        self.template_path = Path(template_path) if template_path else DEFAULT_TEMPLATE
        self.api_host = api_host
        self.api_port = api_port
        self.moto_port = moto_port
        self.env_overrides = dict(env_overrides or {})
        self.principal = principal
        self.pollers_per_mapping = pollers_per_mapping
        self.parameter_overrides = dict(parameter_overrides or {})
        self.region = region
        self.name_prefix = name_prefix
        self.poll_wait_seconds = poll_wait_seconds
        self.access_log = access_log
        if schedule_seconds is not None and schedule_seconds <= 0:
            raise ValueError("schedule_seconds must be positive (or None: the template's own)")
        self.schedule_seconds = schedule_seconds
        self.schedules_enabled = schedules_enabled
        self.notifications_inbox = notifications_inbox

        self.template: Template | None = None
        self.functions: list[FunctionDef] = []
        self.handlers: dict[str, Handler] = {}
        self.pollers: list[SqsPoller] = []
        self.schedules: list[ScheduledInvoker] = []
        self.api_app: ApiGatewayApp | None = None
        self.account_id = ""
        self._provisioned: Provisioned | None = None
        self._inbox: Inbox | None = None
        self._moto_url: str | None = None
        self._api_server: BaseWSGIServer | None = None
        self._api_thread: threading.Thread | None = None
        self._saved_env: dict[str, str | None] = {}
        self._started = False

    # -- public surface ----------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        """Base URL of the API, e.g. ``http://127.0.0.1:8080`` (routes start with ``/v1``)."""
        if self._api_server is None:
            raise LocalStackError("the API is not running (not started, or no Api events)")
        host, port = self._api_server.server_address[:2]
        host_text = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{host_text}:{port}"

    @property
    def moto_url(self) -> str:
        """Base URL of the moto server (the ``AWS_ENDPOINT_URL`` of everything here)."""
        if self._moto_url is None:
            raise LocalStackError("the local stack is not started")
        return self._moto_url

    @property
    def provisioned(self) -> Provisioned:
        """What was created in moto, and what was skipped."""
        if self._provisioned is None:
            raise LocalStackError("the local stack is not started")
        return self._provisioned

    @property
    def resources(self) -> dict[str, str]:
        """Logical id -> physical id (queue URL, table name, bucket name, topic ARN)."""
        return {k: v.ref for k, v in self.provisioned.resources.items()}

    def queue_url(self, logical_id: str) -> str:
        """The URL of a queue of the template, by logical id."""
        return self.provisioned.queue_url(logical_id)

    @property
    def topic_arns(self) -> dict[str, str]:
        """Logical id -> ARN of each SNS topic of the template."""
        return {
            k: v.ref for k, v in self.provisioned.resources.items() if v.type == "AWS::SNS::Topic"
        }

    @property
    def notifications_queue_url(self) -> str:
        """URL of the local inbox subscribed to every topic (read it with
        :func:`broker.local.notifications.drain`)."""
        if self._inbox is None:
            raise LocalStackError(
                "no notifications inbox (not started, notifications_inbox=False, or no topics)"
            )
        return self._inbox.queue_url

    def schedule(self, name: str) -> ScheduledInvoker:
        """A schedule by ``Function/Event``, or by ``Function`` when it has only one.

        Raises:
            LocalStackError: no such schedule, or a function name that is ambiguous.
        """
        matches = [s for s in self.schedules if name in (s.name, s.function_logical_id)]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(s.name for s in self.schedules) or "none"
        if not matches:
            raise LocalStackError(f"no schedule {name!r} (running stack has: {known})")
        raise LocalStackError(f"{name!r} has several schedules ({known}): name one as Fn/Event")

    def trigger(self, name: str, timeout_s: float | None = None) -> Any:
        """Invoke a scheduled function once, now, with its schedule's event; wait for the result.

        Runs in the caller's thread after any running invocation of the function (never two at
        once), whether or not the timers run (``schedules_enabled``) and even for a schedule the
        template disables.

        Args:
            name: ``Function/Event``, or ``Function`` when it has one schedule.
            timeout_s: how long to wait for a running invocation (``None``: no limit).

        Returns:
            What the handler returned.

        Raises:
            LocalStackError: unknown or ambiguous ``name``.
            TimeoutError: the running invocation did not finish in time.
            Exception: whatever the handler raised.
        """
        return self.schedule(name).trigger(timeout_s)

    def schedule_stats(self) -> dict[str, ScheduleStats]:
        """``Function/Event`` -> counters (invocations, errors, skipped ticks, last duration)."""
        return {s.name: s.stats() for s in self.schedules}

    @property
    def environment(self) -> dict[str, str]:
        """The environment the handlers run with (union of the functions' + overrides)."""
        return {k: os.environ[k] for k in self._function_env_keys() if k in os.environ}

    def start(self) -> LocalStack:
        """Start moto, provision, import handlers, serve the API, start the pollers.

        Raises:
            LocalStackError: another stack runs in this process, the template cannot be run
                locally, environments conflict, or a handler cannot be imported. What was
                started is stopped again before raising.
        """
        global _active  # noqa: PLW0603 - one stack per process, by design
        with _moto_lock:
            if _active is not None:
                raise LocalStackError("another LocalStack is already running in this process")
            _active = self
        self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop pollers and API, reset moto, restore the environment. Safe to call twice."""
        global _active  # noqa: PLW0603
        if not self._started:
            return
        # All at once: a poller may be inside a long poll, a schedule inside an invocation.
        for schedule in self.schedules:
            schedule.request_stop()
        for poller in self.pollers:
            poller.request_stop()
        if self._api_server is not None:
            self._api_server.shutdown()
            self._api_server.server_close()
        if self._api_thread is not None:
            self._api_thread.join(_STOP_TIMEOUT_S)
        for poller in self.pollers:
            poller.stop(_STOP_TIMEOUT_S)
        for schedule in self.schedules:
            schedule.stop(_STOP_TIMEOUT_S)
            stats = schedule.stats()
            logger.info(
                "schedule %s: %d invocation(s), %d error(s), %d skipped tick(s)",
                schedule.name,
                stats.invocations,
                stats.errors,
                stats.skipped,
            )
        if self._moto_url is not None:
            try:
                _reset_moto(self._moto_url)
            except OSError as exc:
                logger.warning("resetting moto failed: %s", exc)
        self._restore_env()
        self._api_server = None
        self._api_thread = None
        self.pollers = []
        self.schedules = []
        self._inbox = None
        self.handlers = {}
        self.api_app = None
        self._started = False
        with _moto_lock:
            if _active is self:
                _active = None

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def function_name(self, logical_id: str) -> str:
        """The local name of a function (as the Lambda context reports it)."""
        return physical_name(self.name_prefix, logical_id)

    # -- steps ---------------------------------------------------------------------------------

    def _start(self) -> None:
        template = load_template(self.template_path)
        self.template = template
        port = _moto_server(self.moto_port)
        self._moto_url = f"http://127.0.0.1:{port}"
        _reset_moto(self._moto_url)
        self._set_aws_env(self._moto_url)
        sts = boto3.client("sts", region_name=self.region, endpoint_url=self._moto_url)
        self.account_id = str(sts.get_caller_identity()["Account"])

        self._provisioned = provision(
            template,
            region=self.region,
            account_id=self.account_id,
            endpoint_url=self._moto_url,
            name_prefix=self.name_prefix,
            parameter_overrides=self.parameter_overrides,
        )
        for skipped in self._provisioned.skipped:
            logger.debug("not provisioned locally: %s (%s)", skipped.logical_id, skipped.type)
        if self.notifications_inbox and self.topic_arns:
            self._inbox = create_inbox(
                boto3.client("sqs", region_name=self.region, endpoint_url=self._moto_url),
                boto3.client("sns", region_name=self.region, endpoint_url=self._moto_url),
                name=f"{self.name_prefix}-notifications",
                topic_arns=self.topic_arns.values(),
            )
        self.functions = read_functions(template, self._provisioned.resolver)
        self._set_env(self._union_environment(self.functions))

        served = [f for f in self.functions if f.api_events or f.sqs_events or f.schedule_events]
        code_dir = str(self.template_path.resolve().parent)
        if code_dir not in sys.path:
            sys.path.append(code_dir)
        for function in served:
            self.handlers[function.logical_id] = _import_handler(function)
        self._start_api(template, [f for f in served if f.api_events])
        self._start_pollers([f for f in served if f.sqs_events])
        self._start_schedules([f for f in served if f.schedule_events])
        logger.info(
            "local stack up: api %s, moto %s, %d poller(s), %d schedule(s)%s",
            self.api_url if self._api_server else "-",
            self._moto_url,
            len(self.pollers),
            len(self.schedules),
            "" if self.schedules_enabled else " (timers off)",
        )

    def _union_environment(self, functions: list[FunctionDef]) -> dict[str, str]:
        union: dict[str, str] = {}
        owner: dict[str, str] = {}
        for function in functions:
            for key, value in function.environment.items():
                if key in self.env_overrides:
                    continue
                if key in union and union[key] != value:
                    raise LocalStackError(
                        f"environment conflict: {key} is {union[key]!r} in {owner[key]} but "
                        f"{value!r} in {function.logical_id}; every handler shares this "
                        "process, so give them one value (or override it)"
                    )
                union[key] = value
                owner[key] = function.logical_id
        return {**union, **self.env_overrides}

    def _function_env_keys(self) -> set[str]:
        keys = set(self.env_overrides)
        for function in self.functions:
            keys |= set(function.environment)
        return keys

    def _start_api(self, template: Template, functions: list[FunctionDef]) -> None:
        if not functions:
            return
        assert self._provisioned is not None  # noqa: S101 - set by _start
        resolver = self._provisioned.resolver
        events = [e for f in functions for e in f.api_events]
        rest_api = next((e.rest_api_logical_id for e in events if e.rest_api_logical_id), None)
        routes = [
            ApiRoute(
                resource=event.path,
                method=event.method,
                handler=self.handlers[function.logical_id],
                function_name=self.function_name(function.logical_id),
                timeout_s=function.timeout,
                memory_mb=function.memory,
            )
            for function in functions
            for event in function.api_events
        ]
        self.api_app = ApiGatewayApp(
            routes,
            stage=api_stage(template, resolver, events),
            # SAM names its implicit API "ServerlessRestApi".
            api_id=local_api_id(rest_api or "ServerlessRestApi"),
            account_id=self.account_id,
            region=self.region,
            default_principal=self.principal,
        )
        handler_class = RawHeadersRequestHandler if self.access_log else QuietRequestHandler
        self._api_server = make_server(
            self.api_host,
            self.api_port,
            self.api_app,
            threaded=True,
            request_handler=handler_class,
        )
        self._api_thread = threading.Thread(
            target=self._api_server.serve_forever, name="local-api", daemon=True
        )
        self._api_thread.start()

    def _start_pollers(self, functions: list[FunctionDef]) -> None:
        assert self._provisioned is not None  # noqa: S101 - set by _start
        for function in functions:
            for event in function.sqs_events:
                if not event.enabled:
                    continue
                poller = SqsPoller(
                    function_name=self.function_name(function.logical_id),
                    handler=self.handlers[function.logical_id],
                    event=event,
                    queue_url=self._provisioned.queue_url(event.queue_logical_id),
                    queue_arn=self._provisioned.attribute(event.queue_logical_id, "Arn"),
                    region=self.region,
                    account_id=self.account_id,
                    timeout_s=function.timeout,
                    memory_mb=function.memory,
                    threads=min(self.pollers_per_mapping, event.max_concurrency or 1000),
                    wait_seconds=self.poll_wait_seconds,
                    endpoint_url=self._moto_url,
                )
                poller.start()
                self.pollers.append(poller)

    def _start_schedules(self, functions: list[FunctionDef]) -> None:
        for function in functions:
            # One lock per function: its schedules never invoke it concurrently.
            lock = threading.Lock()
            for event in function.schedule_events:
                invoker = ScheduledInvoker(
                    function_logical_id=function.logical_id,
                    function_name=self.function_name(function.logical_id),
                    handler=self.handlers[function.logical_id],
                    event=event,
                    region=self.region,
                    account_id=self.account_id,
                    timeout_s=function.timeout,
                    memory_mb=function.memory,
                    period_s=self.schedule_seconds,
                    lock=lock,
                )
                if self.schedules_enabled:
                    invoker.start()
                self.schedules.append(invoker)

    # -- environment ---------------------------------------------------------------------------

    def _set_aws_env(self, moto_url: str) -> None:
        values = {
            "AWS_ENDPOINT_URL": moto_url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
            **_FAKE_CREDENTIALS,
        }
        # A service-specific endpoint (AWS_ENDPOINT_URL_SQS …) would beat AWS_ENDPOINT_URL.
        unset = [
            *_UNSET_AWS_ENV,
            *(k for k in os.environ if k.startswith("AWS_ENDPOINT_URL_")),
        ]
        for key in unset:
            self._save_env(key)
            os.environ.pop(key, None)
        self._set_env(values)

    def _save_env(self, key: str) -> None:
        if key not in self._saved_env:
            self._saved_env[key] = os.environ.get(key)

    def _set_env(self, values: Mapping[str, str]) -> None:
        for key, value in values.items():
            self._save_env(key)
            os.environ[key] = value

    def _restore_env(self) -> None:
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()


def _import_handler(function: FunctionDef) -> Handler:
    module_name, _, attribute = function.handler.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise LocalStackError(
            f"cannot import {function.handler} ({function.logical_id}): {exc}"
        ) from exc
    handler = getattr(module, attribute, None)
    if not callable(handler):
        raise LocalStackError(f"{function.handler} ({function.logical_id}) is not a callable")
    result: Handler = handler
    return result
