"""What runs the template's functions locally: their handlers and the event sources that call them.

This module owns the step from a :class:`~broker.local.template.FunctionDef` to something
running: :func:`import_handler` imports a function's ``Handler`` (``module.function``);
:func:`build_api_app` routes every ``Api`` event to its handler in an
:class:`~broker.local.apigw.ApiGatewayApp` and :func:`serve_api` serves it on a threaded werkzeug
server; :func:`build_pollers` makes one :class:`~broker.local.pollers.SqsPoller` per enabled
``SQS`` event and :func:`build_schedules` one :class:`~broker.local.scheduler.ScheduledInvoker`
per ``Schedule``/``ScheduleV2`` event (the schedules of one function share a lock, so it is
never invoked twice at once). The builders yield objects not yet started:
:class:`~broker.local.stack.LocalStack` starts each and keeps it, so that a failure part-way
leaves it holding exactly what it has to stop, which :func:`stop_runners` then does.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server

from broker.local.apigw import (
    ApiGatewayApp,
    ApiRoute,
    QuietRequestHandler,
    RawHeadersRequestHandler,
)
from broker.local.pollers import SqsPoller
from broker.local.provision import Provisioned
from broker.local.scheduler import ScheduledInvoker
from broker.local.template import (
    FunctionDef,
    LocalStackError,
    Resolver,
    Template,
    api_stage,
    local_api_id,
    physical_name,
)

__all__ = [
    "Handler",
    "Wiring",
    "build_api_app",
    "build_pollers",
    "build_schedules",
    "import_handler",
    "serve_api",
    "stop_runners",
]

logger = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], Any], Any]


@dataclass(frozen=True)
class Wiring:
    """What every runner needs to know of the running stack."""

    handlers: Mapping[str, Handler]
    """Function logical id -> its imported handler."""
    name_prefix: str
    region: str
    account_id: str

    def function_name(self, logical_id: str) -> str:
        """The local name of a function (as the Lambda context reports it)."""
        return physical_name(self.name_prefix, logical_id)


def import_handler(function: FunctionDef) -> Handler:
    """Import ``function.handler`` (``module.attribute``).

    Raises:
        LocalStackError: the module cannot be imported, or the attribute is not a callable.
    """
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


def build_api_app(
    wiring: Wiring,
    template: Template,
    resolver: Resolver,
    functions: Iterable[FunctionDef],
    *,
    principal: str,
) -> ApiGatewayApp:
    """The API Gateway emulation with a route per ``Api`` event of ``functions``."""
    functions = list(functions)
    events = [e for f in functions for e in f.api_events]
    rest_api = next((e.rest_api_logical_id for e in events if e.rest_api_logical_id), None)
    routes = [
        ApiRoute(
            resource=event.path,
            method=event.method,
            handler=wiring.handlers[function.logical_id],
            function_name=wiring.function_name(function.logical_id),
            timeout_s=function.timeout,
            memory_mb=function.memory,
        )
        for function in functions
        for event in function.api_events
    ]
    return ApiGatewayApp(
        routes,
        stage=api_stage(template, resolver, events),
        # SAM names its implicit API "ServerlessRestApi".
        api_id=local_api_id(rest_api or "ServerlessRestApi"),
        account_id=wiring.account_id,
        region=wiring.region,
        default_principal=principal,
    )


def serve_api(
    app: ApiGatewayApp, host: str, port: int, *, access_log: bool
) -> tuple[BaseWSGIServer, threading.Thread]:
    """Serve ``app`` on ``host:port`` (0: a free port) from a daemon thread, already started."""
    handler_class = RawHeadersRequestHandler if access_log else QuietRequestHandler
    server = make_server(host, port, app, threaded=True, request_handler=handler_class)
    thread = threading.Thread(target=server.serve_forever, name="local-api", daemon=True)
    thread.start()
    return server, thread


def build_pollers(
    wiring: Wiring,
    functions: Iterable[FunctionDef],
    provisioned: Provisioned,
    *,
    threads_per_mapping: int,
    wait_seconds: int,
    endpoint_url: str | None,
) -> Iterator[SqsPoller]:
    """One poller per enabled ``SQS`` event of ``functions`` (not started), one at a time."""
    for function in functions:
        for event in function.sqs_events:
            if not event.enabled:
                continue
            yield SqsPoller(
                function_name=wiring.function_name(function.logical_id),
                handler=wiring.handlers[function.logical_id],
                event=event,
                queue_url=provisioned.queue_url(event.queue_logical_id),
                queue_arn=provisioned.attribute(event.queue_logical_id, "Arn"),
                region=wiring.region,
                account_id=wiring.account_id,
                timeout_s=function.timeout,
                memory_mb=function.memory,
                threads=min(threads_per_mapping, event.max_concurrency or 1000),
                wait_seconds=wait_seconds,
                endpoint_url=endpoint_url,
            )


def build_schedules(
    wiring: Wiring, functions: Iterable[FunctionDef], *, period_s: float | None
) -> Iterator[ScheduledInvoker]:
    """One invoker per schedule event of ``functions`` (not started), one at a time."""
    for function in functions:
        # One lock per function: its schedules never invoke it concurrently.
        lock = threading.Lock()
        for event in function.schedule_events:
            yield ScheduledInvoker(
                function_logical_id=function.logical_id,
                function_name=wiring.function_name(function.logical_id),
                handler=wiring.handlers[function.logical_id],
                event=event,
                region=wiring.region,
                account_id=wiring.account_id,
                timeout_s=function.timeout,
                memory_mb=function.memory,
                period_s=period_s,
                lock=lock,
            )


def stop_runners(
    schedules: Sequence[ScheduledInvoker],
    pollers: Sequence[SqsPoller],
    api_server: BaseWSGIServer | None,
    api_thread: threading.Thread | None,
    timeout_s: float,
) -> None:
    """Stop what calls the handlers: ask every one to stop, then wait for each in turn.

    Each schedule's counters are logged once it has stopped.
    """
    # All at once: a poller may be inside a long poll, a schedule inside an invocation.
    for schedule in schedules:
        schedule.request_stop()
    for poller in pollers:
        poller.request_stop()
    if api_server is not None:
        api_server.shutdown()
        api_server.server_close()
    if api_thread is not None:
        api_thread.join(timeout_s)
    for poller in pollers:
        poller.stop(timeout_s)
    for schedule in schedules:
        schedule.stop(timeout_s)
        stats = schedule.stats()
        logger.info(
            "schedule %s: %d invocation(s), %d error(s), %d skipped tick(s)",
            schedule.name,
            stats.invocations,
            stats.errors,
            stats.skipped,
        )
