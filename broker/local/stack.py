"""The whole broker on one machine: moto for AWS, the real handlers, pollers for the queues.

:class:`LocalStack` reads ``template.yaml`` and

1. starts (or reuses: :mod:`broker.local.moto_servers`) a moto server on 127.0.0.1, in a
   process of its own (:mod:`broker.local.moto_process`: moto gets its own core and GIL), and
   points boto3 at it through the process environment (``AWS_ENDPOINT_URL``, region, fake
   credentials);
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

This module owns that sequence and the stack's public surface; the steps live next to it:
:mod:`broker.local.moto_servers` (one moto server per process, reused and reset across
start/stop), :mod:`broker.local.process_env` (the merged environment, set and restored),
:mod:`broker.local.provision`, :mod:`broker.local.notifications` and
:mod:`broker.local.runners` (handlers, API server, pollers, schedules). Only one ``LocalStack``
may run at a time in a process.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import boto3
from werkzeug.serving import BaseWSGIServer

from broker.local.apigw import DEFAULT_PRINCIPAL, ApiGatewayApp
from broker.local.moto_servers import (
    moto_cpu_seconds,
    moto_server,
    reset_moto,
    shutdown_moto_servers,
)
from broker.local.notifications import Inbox, create_inbox
from broker.local.pollers import SqsPoller
from broker.local.process_env import ProcessEnvironment, union_environment
from broker.local.provision import Provisioned, provision
from broker.local.runners import (
    Handler,
    Wiring,
    build_api_app,
    build_pollers,
    build_schedules,
    import_handler,
    serve_api,
    stop_runners,
)
from broker.local.scheduler import ScheduledInvoker, ScheduleStats
from broker.local.template import (
    DEFAULT_NAME_PREFIX,
    FunctionDef,
    LocalStackError,
    Template,
    load_template,
    physical_name,
    read_functions,
)

if TYPE_CHECKING:
    from broker.adapters.dynamodb.users import DynamoUserMappings

__all__ = [
    "DEFAULT_TEMPLATE",
    "Handler",
    "LocalStack",
    "moto_cpu_seconds",
    "shutdown_moto_servers",
]

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE: Final = Path(__file__).resolve().parents[2] / "template.yaml"
DEFAULT_REGION: Final = "us-east-1"
_LOOPBACK_NAMES: Final = frozenset({"localhost"})
_STOP_TIMEOUT_S: Final = 10.0

_active_lock = threading.Lock()
_active: LocalStack | None = None


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
        self._env = ProcessEnvironment()
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
        with _active_lock:
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
        stop_runners(
            self.schedules, self.pollers, self._api_server, self._api_thread, _STOP_TIMEOUT_S
        )
        if self._moto_url is not None:
            try:
                reset_moto(self._moto_url)
            except OSError as exc:
                logger.warning("resetting moto failed: %s", exc)
        self._env.restore()
        self._api_server = None
        self._api_thread = None
        self.pollers = []
        self.schedules = []
        self._inbox = None
        self.handlers = {}
        self.api_app = None
        self._started = False
        with _active_lock:
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

    def user_mappings(self) -> DynamoUserMappings:
        """The broker's caller-to-user mappings in this stack's table (``broker.users``)."""
        # Imported here: loading broker modules before start() sets the handlers' environment
        # would make Powertools read the process's (no metrics namespace, for one).
        from broker.adapters.dynamodb.users import DynamoUserMappings  # noqa: PLC0415

        ddb = boto3.client("dynamodb", region_name=self.region, endpoint_url=self.moto_url)
        return DynamoUserMappings(ddb, self.resources["RequestsTable"])

    def map_user(self, cluster: str, principal: str, user: str, *, by: str = "local") -> None:
        """Let ``principal`` run as POSIX ``user`` on ``cluster`` (as an admin would)."""
        from broker.users.models import MappingBody  # noqa: PLC0415 - see user_mappings
        from broker.users.service import UserAdmin  # noqa: PLC0415

        body = MappingBody(principal=principal, user=user)
        UserAdmin(self.user_mappings()).put(by, cluster, body)

    def function_name(self, logical_id: str) -> str:
        """The local name of a function (as the Lambda context reports it)."""
        return physical_name(self.name_prefix, logical_id)

    # -- steps ---------------------------------------------------------------------------------

    def _start(self) -> None:
        template = load_template(self.template_path)
        self.template = template
        port = moto_server(self.moto_port)
        self._moto_url = f"http://127.0.0.1:{port}"
        reset_moto(self._moto_url)
        self._env.point_at_moto(self._moto_url, self.region)
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
        self._env.set(union_environment(self.functions, self.env_overrides))

        served = [f for f in self.functions if f.api_events or f.sqs_events or f.schedule_events]
        code_dir = str(self.template_path.resolve().parent)
        if code_dir not in sys.path:
            sys.path.append(code_dir)
        for function in served:
            self.handlers[function.logical_id] = import_handler(function)
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

    def _function_env_keys(self) -> set[str]:
        keys = set(self.env_overrides)
        for function in self.functions:
            keys |= set(function.environment)
        return keys

    def _start_api(self, template: Template, functions: list[FunctionDef]) -> None:
        if not functions:
            return
        assert self._provisioned is not None  # noqa: S101 - set by _start
        self.api_app = build_api_app(
            self._wiring(),
            template,
            self._provisioned.resolver,
            functions,
            principal=self.principal,
        )
        self._api_server, self._api_thread = serve_api(
            self.api_app, self.api_host, self.api_port, access_log=self.access_log
        )

    def _start_pollers(self, functions: list[FunctionDef]) -> None:
        assert self._provisioned is not None  # noqa: S101 - set by _start
        for poller in build_pollers(
            self._wiring(),
            functions,
            self._provisioned,
            threads_per_mapping=self.pollers_per_mapping,
            wait_seconds=self.poll_wait_seconds,
            endpoint_url=self._moto_url,
        ):
            poller.start()
            self.pollers.append(poller)

    def _start_schedules(self, functions: list[FunctionDef]) -> None:
        for invoker in build_schedules(self._wiring(), functions, period_s=self.schedule_seconds):
            if self.schedules_enabled:
                invoker.start()
            self.schedules.append(invoker)

    def _wiring(self) -> Wiring:
        return Wiring(self.handlers, self.name_prefix, self.region, self.account_id)
