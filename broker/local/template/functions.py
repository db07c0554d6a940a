"""The template's functions as the local stack runs them, with their event sources.

This module owns ``AWS::Serverless::Function``: :func:`read_functions` gives each active
function's handler, timeout, memory and environment (``Globals.Function`` merged with its own,
resolved) and its events as typed dataclasses: ``SQS`` (:class:`SqsEventDef`, what a poller
needs), ``Api`` (:class:`ApiEventDef`, a route) and ``Schedule``/``ScheduleV2``
(:class:`ScheduleEventDef`, with the local rule or schedule ARN); other event types are ignored.
:func:`api_stage` names the stage of the REST API the ``Api`` events belong to. SAM's and
Lambda's defaults (batch size, timeout, memory) apply where the template says nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from broker.local.template.intrinsics import Resolver
from broker.local.template.model import FUNCTION_TYPE, Template, TemplateError, physical_name
from broker.local.template.schedules import ScheduleExpression, parse_schedule_expression

__all__ = [
    "ApiEventDef",
    "FunctionDef",
    "ScheduleEventDef",
    "SqsEventDef",
    "api_stage",
    "read_functions",
]

# SAM's defaults for an SQS event source (and Lambda's, which SAM does not override).
_SQS_DEFAULT_BATCH_SIZE: Final = 10
_DEFAULT_TIMEOUT_S: Final = 3
_DEFAULT_MEMORY_MB: Final = 128


@dataclass(frozen=True)
class SqsEventDef:
    """An SQS event source mapping of a function."""

    name: str
    queue_logical_id: str
    batch_size: int
    batching_window_s: float
    report_batch_item_failures: bool
    enabled: bool = True
    max_concurrency: int | None = None
    """``ScalingConfig.MaximumConcurrency``: at most this many pollers run the mapping."""


@dataclass(frozen=True)
class ApiEventDef:
    """An ``Api`` event of a function: a resource path (``/{proxy+}``) and a method (``ANY``)."""

    name: str
    path: str
    method: str
    rest_api_logical_id: str | None = None


@dataclass(frozen=True)
class ScheduleEventDef:
    """A ``Schedule`` (EventBridge rule) or ``ScheduleV2`` (EventBridge Scheduler) event.

    ``rule_arn`` is the local ARN of the rule (``arn:aws:events:…:rule/<name>``) or of the
    schedule (``arn:aws:scheduler:…:schedule/<group>/<name>``): what the event's
    ``resources`` names. ``input`` is the ``Input`` JSON text, sent instead of the default event.
    """

    name: str
    type: Literal["Schedule", "ScheduleV2"]
    expression: ScheduleExpression
    rule_name: str
    rule_arn: str
    enabled: bool = True
    input: str | None = None


@dataclass(frozen=True)
class FunctionDef:
    """An ``AWS::Serverless::Function`` as the local stack runs it."""

    logical_id: str
    handler: str
    environment: dict[str, str]
    timeout: int
    memory: int
    sqs_events: list[SqsEventDef] = field(default_factory=list)
    api_events: list[ApiEventDef] = field(default_factory=list)
    schedule_events: list[ScheduleEventDef] = field(default_factory=list)


def _env_vars(section: Mapping[str, Any]) -> dict[str, Any]:
    env = section.get("Environment") or {}
    return dict(env.get("Variables") or {})


def _queue_logical_id(queue: Any, function_id: str, event_name: str) -> str:
    # SAM accepts the queue as an ARN: locally only a GetAtt to a queue of this template can be
    # mapped to a poller, which is what a self-contained stack uses.
    if isinstance(queue, dict) and "Fn::GetAtt" in queue:
        arg = queue["Fn::GetAtt"]
        logical_id, attribute = arg.split(".", 1) if isinstance(arg, str) else arg
        if attribute == "Arn":
            return str(logical_id)
    raise TemplateError(
        f"{function_id}.Events.{event_name}: Queue must be !GetAtt <Queue>.Arn to run locally, "
        f"got {queue!r}"
    )


def _sqs_event(
    resolver: Resolver, function_id: str, name: str, props: Mapping[str, Any]
) -> SqsEventDef:
    queue_id = _queue_logical_id(props.get("Queue"), function_id, name)
    queue = resolver.template.resources.get(queue_id)
    if queue is None or queue.type != "AWS::SQS::Queue":
        raise TemplateError(f"{function_id}.Events.{name}: {queue_id} is not an AWS::SQS::Queue")
    response_types = resolver.resolve(props.get("FunctionResponseTypes") or [])
    maximum = (props.get("ScalingConfig") or {}).get("MaximumConcurrency")
    return SqsEventDef(
        name=name,
        queue_logical_id=queue_id,
        batch_size=int(resolver.resolve_str(props.get("BatchSize", _SQS_DEFAULT_BATCH_SIZE))),
        batching_window_s=float(
            resolver.resolve_str(props.get("MaximumBatchingWindowInSeconds", 0))
        ),
        report_batch_item_failures="ReportBatchItemFailures" in response_types,
        enabled=resolver.resolve_str(props.get("Enabled", True)) == "true",
        max_concurrency=int(resolver.resolve_str(maximum)) if maximum is not None else None,
    )


def _api_event(
    resolver: Resolver, function_id: str, name: str, props: Mapping[str, Any]
) -> ApiEventDef:
    path = resolver.resolve_str(props.get("Path", ""))
    method = resolver.resolve_str(props.get("Method", "")).upper()
    if not path.startswith("/") or not method:
        raise TemplateError(f"{function_id}.Events.{name}: Api event needs Path and Method")
    rest_api = props.get("RestApiId")
    rest_api_id = rest_api.get("Ref") if isinstance(rest_api, dict) else None
    return ApiEventDef(name=name, path=path, method=method, rest_api_logical_id=rest_api_id)


def _schedule_event(
    resolver: Resolver,
    function_id: str,
    name: str,
    kind: Literal["Schedule", "ScheduleV2"],
    props: Mapping[str, Any],
) -> ScheduleEventDef:
    where = f"{function_id}.Events.{name}"
    key = "Schedule" if kind == "Schedule" else "ScheduleExpression"
    if key not in props:
        raise TemplateError(f"{where}: a {kind} event needs {key}")
    timezone = resolver.resolve_str(props.get("ScheduleExpressionTimezone", "UTC"))
    try:
        expression = parse_schedule_expression(resolver.resolve_str(props[key]), timezone=timezone)
    except TemplateError as exc:
        raise TemplateError(f"{where}: {exc}") from exc
    if expression.kind == "at" and kind == "Schedule":
        raise TemplateError(f"{where}: at() is only for ScheduleV2 (EventBridge Scheduler)")
    # SAM: Enabled (a boolean) or State; a rule without either is enabled.
    state = resolver.resolve_str(props.get("State", "ENABLED")).upper()
    enabled = state != "DISABLED"
    if "Enabled" in props:
        enabled = enabled and resolver.resolve_str(props["Enabled"]) == "true"
    input_text = resolver.resolve_str(props["Input"]) if "Input" in props else None
    if input_text is not None:
        try:
            json.loads(input_text)
        except ValueError as exc:
            raise TemplateError(f"{where}: Input must be JSON text: {exc}") from exc
    # SAM names the generated rule (or schedule) <Function><Event>; CloudFormation then gives
    # a rule a stack-prefixed physical name, which is what the local prefix stands for.
    logical = f"{function_id}{name}"
    partition, region, account = resolver.partition, resolver.region, resolver.account_id
    if kind == "Schedule":
        rule_name = (
            resolver.resolve_str(props["Name"])
            if "Name" in props
            else physical_name(resolver.name_prefix, logical)
        )
        arn = f"arn:{partition}:events:{region}:{account}:rule/{rule_name}"
    else:
        rule_name = resolver.resolve_str(props["Name"]) if "Name" in props else logical
        group = resolver.resolve_str(props.get("GroupName", "default"))
        arn = f"arn:{partition}:scheduler:{region}:{account}:schedule/{group}/{rule_name}"
    return ScheduleEventDef(
        name=name,
        type=kind,
        expression=expression,
        rule_name=rule_name,
        rule_arn=arn,
        enabled=enabled,
        input=input_text,
    )


def read_functions(template: Template, resolver: Resolver) -> list[FunctionDef]:
    """Every active ``AWS::Serverless::Function`` with its resolved environment and events.

    Events read: ``SQS``, ``Api``, ``Schedule`` and ``ScheduleV2``; other types are ignored.

    The environment is ``Globals.Function.Environment`` merged with the function's own (the
    function wins, as SAM merges them); ``Timeout``/``MemorySize`` fall back to the globals, then
    to Lambda's defaults.

    Raises:
        TemplateError: a value that cannot be resolved (e.g. a resource not provisioned yet).
    """
    glob = template.globals_function
    functions: list[FunctionDef] = []
    for res in template.of_type(FUNCTION_TYPE):
        if not resolver.is_active(res):
            continue
        props = res.properties
        merged = {**_env_vars(glob), **_env_vars(props)}
        environment = {
            k: resolver.resolve_str(v)
            for k, v in merged.items()
            if not (isinstance(v, dict) and v.get("Ref") == "AWS::NoValue")
        }
        sqs_events: list[SqsEventDef] = []
        api_events: list[ApiEventDef] = []
        schedule_events: list[ScheduleEventDef] = []
        for name, event in (props.get("Events") or {}).items():
            kind = event.get("Type")
            event_props = event.get("Properties") or {}
            if kind == "SQS":
                sqs_events.append(_sqs_event(resolver, res.logical_id, name, event_props))
            elif kind == "Api":
                api_events.append(_api_event(resolver, res.logical_id, name, event_props))
            elif kind in ("Schedule", "ScheduleV2"):
                schedule_events.append(
                    _schedule_event(resolver, res.logical_id, name, kind, event_props)
                )
        handler = props.get("Handler", glob.get("Handler"))
        if not isinstance(handler, str) or "." not in handler:
            raise TemplateError(f"{res.logical_id}: Handler must be 'module.function'")
        functions.append(
            FunctionDef(
                logical_id=res.logical_id,
                handler=handler,
                environment=environment,
                timeout=int(
                    resolver.resolve_str(
                        props.get("Timeout", glob.get("Timeout", _DEFAULT_TIMEOUT_S))
                    )
                ),
                memory=int(
                    resolver.resolve_str(
                        props.get("MemorySize", glob.get("MemorySize", _DEFAULT_MEMORY_MB))
                    )
                ),
                sqs_events=sqs_events,
                api_events=api_events,
                schedule_events=schedule_events,
            )
        )
    return functions


def api_stage(template: Template, resolver: Resolver, api_events: Iterable[ApiEventDef]) -> str:
    """The stage name of the REST API the events belong to (SAM's implicit API: ``Prod``)."""
    for event in api_events:
        if event.rest_api_logical_id:
            api = template.resources.get(event.rest_api_logical_id)
            if api is not None and "StageName" in api.properties:
                return resolver.resolve_str(api.properties["StageName"])
    return "Prod"
