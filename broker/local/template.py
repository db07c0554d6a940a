"""Read ``template.yaml`` the way the local stack needs it.

Three parts:

* :func:`load_template` parses the SAM/CloudFormation file with a YAML loader that understands
  the short-form intrinsic tags (``!Ref``, ``!GetAtt``, ``!Sub`` …) and turns each into its
  long form (``{"Ref": …}``, ``{"Fn::GetAtt": [...]}``, ``{"Fn::Sub": …}``), so the rest of the
  code only ever sees one shape.
* :class:`Resolver` evaluates the intrinsics that matter locally (``Ref``, ``Fn::GetAtt``,
  ``Fn::Sub`` and the few pure functions around them) against parameters, pseudo parameters and
  the physical ids of what :mod:`broker.local.provision` created.
* :func:`read_functions` extracts each ``AWS::Serverless::Function`` (handler, merged and
  resolved environment, SQS, Api and Schedule/ScheduleV2 events) as typed dataclasses;
  :func:`parse_schedule_expression` reads EventBridge's ``rate(...)``, ``cron(...)`` and
  ``at(...)`` expressions, and :class:`CronExpression` computes when a cron schedule fires.

Nothing here talks to the network; this module is pure and unit-tested against the real
``template.yaml``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

__all__ = [
    "API_TYPES",
    "FUNCTION_TYPE",
    "PROVISIONED_TYPES",
    "ApiEventDef",
    "CronExpression",
    "FunctionDef",
    "LocalStackError",
    "PhysicalResource",
    "Resolver",
    "ResourceDef",
    "ScheduleEventDef",
    "ScheduleExpression",
    "SqsEventDef",
    "Template",
    "TemplateError",
    "load_template",
    "local_api_id",
    "parse_schedule_expression",
    "physical_name",
    "read_functions",
    "references",
]

FUNCTION_TYPE: Final = "AWS::Serverless::Function"
API_TYPES: Final = frozenset({"AWS::Serverless::Api", "AWS::ApiGateway::RestApi"})
PROVISIONED_TYPES: Final = frozenset(
    {
        "AWS::SQS::Queue",
        "AWS::DynamoDB::Table",
        "AWS::S3::Bucket",
        "AWS::SNS::Topic",
        "AWS::SNS::Subscription",
        "AWS::SecretsManager::Secret",
    }
)
DEFAULT_NAME_PREFIX: Final = "hpcb-local"

logger = logging.getLogger(__name__)

# SAM's defaults for an SQS event source (and Lambda's, which SAM does not override).
_SQS_DEFAULT_BATCH_SIZE: Final = 10
_DEFAULT_TIMEOUT_S: Final = 3
_DEFAULT_MEMORY_MB: Final = 128


class LocalStackError(Exception):
    """Base of every error the local stack raises on purpose."""


class TemplateError(LocalStackError):
    """The template cannot be read, or an intrinsic cannot be resolved locally."""


# --------------------------------------------------------------------------------------------
# Loading: short-form tags -> long form
# --------------------------------------------------------------------------------------------

_TAG_TO_FN: Final[dict[str, str]] = {
    "!Sub": "Fn::Sub",
    "!Join": "Fn::Join",
    "!If": "Fn::If",
    "!Select": "Fn::Select",
    "!Split": "Fn::Split",
    "!FindInMap": "Fn::FindInMap",
    "!Equals": "Fn::Equals",
    "!Not": "Fn::Not",
    "!And": "Fn::And",
    "!Or": "Fn::Or",
    "!Base64": "Fn::Base64",
    "!ImportValue": "Fn::ImportValue",
    "!GetAZs": "Fn::GetAZs",
    "!Cidr": "Fn::Cidr",
    "!Length": "Fn::Length",
    "!ToJsonString": "Fn::ToJsonString",
    "!Transform": "Fn::Transform",
}


class _CfnLoader(yaml.SafeLoader):
    """A safe loader that also knows CloudFormation's short-form tags."""


def _construct_node(loader: _CfnLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    raise TemplateError(f"unsupported YAML node {node!r}")  # pragma: no cover - yaml has 3 kinds


def _make_fn_constructor(fn_name: str) -> Any:
    def construct(loader: _CfnLoader, node: yaml.Node) -> dict[str, Any]:
        return {fn_name: _construct_node(loader, node)}

    return construct


def _construct_ref(loader: _CfnLoader, node: yaml.Node) -> dict[str, Any]:
    return {"Ref": _construct_node(loader, node)}


def _construct_condition(loader: _CfnLoader, node: yaml.Node) -> dict[str, Any]:
    return {"Condition": _construct_node(loader, node)}


def _construct_getatt(loader: _CfnLoader, node: yaml.Node) -> dict[str, Any]:
    value = _construct_node(loader, node)
    if isinstance(value, str):
        # "Resource.Attribute"; the attribute itself may contain dots (e.g. Endpoint.Address),
        # so only the first dot separates them, as CloudFormation does.
        logical_id, sep, attribute = value.partition(".")
        if not sep or not attribute:
            raise TemplateError(f"!GetAtt {value!r}: expected 'Resource.Attribute'")
        return {"Fn::GetAtt": [logical_id, attribute]}
    return {"Fn::GetAtt": value}


_CfnLoader.add_constructor("!Ref", _construct_ref)
_CfnLoader.add_constructor("!GetAtt", _construct_getatt)
_CfnLoader.add_constructor("!Condition", _construct_condition)
for _tag, _fn in _TAG_TO_FN.items():
    _CfnLoader.add_constructor(_tag, _make_fn_constructor(_fn))


def load_yaml(text: str) -> Any:
    """Parse CloudFormation YAML text, short-form tags turned into long-form dicts."""
    return yaml.load(text, Loader=_CfnLoader)  # noqa: S506 - a SafeLoader subclass


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParameterDef:
    """One entry of ``Parameters``."""

    name: str
    type: str
    default: Any = None


@dataclass(frozen=True)
class ResourceDef:
    """One entry of ``Resources``, properties still in long-form intrinsic shape."""

    logical_id: str
    type: str
    properties: dict[str, Any]
    depends_on: frozenset[str] = frozenset()
    condition: str | None = None


@dataclass(frozen=True)
class Template:
    """A loaded template: the raw document plus typed views of its sections."""

    path: Path | None
    document: dict[str, Any]
    parameters: dict[str, ParameterDef]
    resources: dict[str, ResourceDef]

    @property
    def globals_function(self) -> dict[str, Any]:
        """The ``Globals.Function`` section (empty when absent)."""
        glob = self.document.get("Globals") or {}
        return dict(glob.get("Function") or {})

    def of_type(self, *types: str) -> list[ResourceDef]:
        """Resources of the given types, in template order."""
        return [r for r in self.resources.values() if r.type in types]


@dataclass(frozen=True)
class PhysicalResource:
    """What a created resource resolves to: its ``Ref`` value and its ``GetAtt`` attributes."""

    logical_id: str
    type: str
    ref: str
    attributes: dict[str, str] = field(default_factory=dict)


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
class CronExpression:
    """The six fields of an EventBridge ``cron(...)`` expression, each as its allowed values.

    Fields are minutes, hours, day-of-month, month, day-of-week (``1`` = Sunday … ``7`` =
    Saturday, as EventBridge counts) and year. ``None`` for a day field is its ``?``: no
    constraint. ``approximate`` says a field used ``L``, ``W`` or ``#``, which are not emulated:
    that field allows every value (a warning is logged when it is parsed).
    """

    minutes: frozenset[int]
    hours: frozenset[int]
    days_of_month: frozenset[int] | None
    months: frozenset[int]
    days_of_week: frozenset[int] | None
    years: frozenset[int]
    approximate: bool = False

    def matches(self, moment: datetime) -> bool:
        """Whether the schedule fires in the minute of ``moment`` (wall time of its zone)."""
        return (
            moment.year in self.years
            and moment.month in self.months
            and self._day_matches(moment)
            and moment.hour in self.hours
            and moment.minute in self.minutes
        )

    def next_after(self, moment: datetime) -> datetime | None:
        """The first firing minute strictly after ``moment`` (same zone), or ``None`` if never.

        Walks forward a year, month, day, hour or minute at a time, whichever field fails
        first: a few thousand steps at most, even for a once-a-leap-day expression.
        """
        t = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
        last_year = max(self.years)
        while t.year <= last_year:
            if t.year not in self.years:
                t = t.replace(year=t.year + 1, month=1, day=1, hour=0, minute=0)
            elif t.month not in self.months:
                first = t.replace(day=1, hour=0, minute=0)
                t = (first + timedelta(days=32)).replace(day=1)
            elif not self._day_matches(t):
                t = t.replace(hour=0, minute=0) + timedelta(days=1)
            elif t.hour not in self.hours:
                t = t.replace(minute=0) + timedelta(hours=1)
            elif t.minute not in self.minutes:
                t += timedelta(minutes=1)
            else:
                return t
        return None

    def _day_matches(self, moment: datetime) -> bool:
        if self.days_of_month is not None and moment.day not in self.days_of_month:
            return False
        # datetime: Monday = 0 … Sunday = 6; EventBridge: Sunday = 1 … Saturday = 7.
        weekday = (moment.weekday() + 1) % 7 + 1
        return self.days_of_week is None or weekday in self.days_of_week


@dataclass(frozen=True)
class ScheduleExpression:
    """A parsed EventBridge schedule expression.

    ``rate``: every ``period_s`` seconds; ``cron``: at the minutes ``cron`` allows, in
    ``timezone``; ``at`` (EventBridge Scheduler only): once, at ``at``.
    """

    text: str
    kind: Literal["rate", "cron", "at"]
    period_s: float | None = None
    cron: CronExpression | None = None
    at: datetime | None = None
    timezone: str = "UTC"

    def next_after(self, moment: datetime) -> datetime | None:
        """When the schedule fires next after ``moment`` (aware, UTC); ``None``: never again.

        A rate counts from ``moment`` (the previous firing), as EventBridge counts from the
        rule's creation.
        """
        if self.kind == "rate":
            assert self.period_s is not None  # noqa: S101 - set for every rate
            return moment + timedelta(seconds=self.period_s)
        if self.kind == "at":
            assert self.at is not None  # noqa: S101 - set for every at()
            return self.at if self.at > moment else None
        assert self.cron is not None  # noqa: S101 - set for every cron()
        zone = ZoneInfo(self.timezone)
        found = self.cron.next_after(moment.astimezone(zone))
        return found.astimezone(UTC) if found is not None else None


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


def load_template(path: str | Path) -> Template:
    """Load a SAM/CloudFormation YAML template.

    Args:
        path: the template file.

    Returns:
        The parsed template.

    Raises:
        TemplateError: unreadable file, or a document without a ``Resources`` mapping.
    """
    p = Path(path)
    try:
        document = load_yaml(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise TemplateError(f"cannot read template {p}: {exc}") from exc
    return template_from_document(document, path=p)


def template_from_document(document: Any, *, path: Path | None = None) -> Template:
    """Build a :class:`Template` from an already parsed document."""
    if not isinstance(document, dict) or not isinstance(document.get("Resources"), dict):
        raise TemplateError(f"template {path or '<document>'} has no Resources mapping")
    parameters = {
        name: ParameterDef(
            name=name, type=str(spec.get("Type", "String")), default=spec.get("Default")
        )
        for name, spec in (document.get("Parameters") or {}).items()
    }
    resources: dict[str, ResourceDef] = {}
    for logical_id, spec in document["Resources"].items():
        if not isinstance(spec, dict) or "Type" not in spec:
            raise TemplateError(f"resource {logical_id} has no Type")
        depends = spec.get("DependsOn") or []
        if isinstance(depends, str):
            depends = [depends]
        resources[logical_id] = ResourceDef(
            logical_id=logical_id,
            type=str(spec["Type"]),
            properties=dict(spec.get("Properties") or {}),
            depends_on=frozenset(depends),
            condition=spec.get("Condition"),
        )
    return Template(path=path, document=document, parameters=parameters, resources=resources)


def physical_name(prefix: str, logical_id: str) -> str:
    """The deterministic local name of a resource: ``<prefix>-<LogicalId>``."""
    return f"{prefix}-{logical_id}"


def local_api_id(logical_id: str) -> str:
    """A stable, API-Gateway-shaped (10 lowercase alphanumerics) id for a local REST API."""
    return hashlib.sha256(logical_id.encode()).hexdigest()[:10]


def references(value: Any) -> set[str]:
    """Logical ids (resources or parameters) that ``value`` refers to via Ref/GetAtt/Sub."""
    found: set[str] = set()
    if isinstance(value, list):
        for item in value:
            found |= references(item)
    elif isinstance(value, dict):
        if len(value) == 1:
            ((key, arg),) = value.items()
            if key == "Ref" and isinstance(arg, str):
                return {arg}
            if key == "Fn::GetAtt":
                target = arg.split(".", 1)[0] if isinstance(arg, str) else arg[0]
                return {str(target)}
            if key == "Fn::Sub":
                text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
                for name in _SUB_VAR.findall(text):
                    if not name.startswith("!") and name not in variables:
                        found.add(name.split(".", 1)[0])
                return found | references(variables)
        for item in value.values():
            found |= references(item)
    return found


# --------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------

_SUB_VAR: Final = re.compile(r"\$\{([^}]*)\}")


class _NoValue:
    """``AWS::NoValue``: removes the enclosing property."""

    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE: Final = _NoValue()


class Resolver:
    """Evaluates intrinsic functions against local facts.

    Supported: ``Ref`` (parameters, pseudo parameters, resources), ``Fn::GetAtt``, ``Fn::Sub``
    (both forms), ``Fn::Join``, ``Fn::Select``, ``Fn::Split``, ``Fn::If`` with template conditions
    (``Fn::Equals``/``Not``/``And``/``Or``/``Condition``), ``Fn::FindInMap``, ``Fn::Base64``,
    ``Fn::GetAZs``. ``Fn::ImportValue`` and friends raise :class:`TemplateError`: a local stack
    has no other stacks to import from.

    Resources resolve through ``physical`` (filled by provisioning, possibly as it goes); REST
    APIs and functions, which are never provisioned, resolve to deterministic local names.
    """

    def __init__(
        self,
        template: Template,
        *,
        region: str,
        account_id: str,
        physical: Mapping[str, PhysicalResource] | None = None,
        parameter_overrides: Mapping[str, str] | None = None,
        name_prefix: str = DEFAULT_NAME_PREFIX,
        stack_name: str = DEFAULT_NAME_PREFIX,
    ) -> None:
        self.template = template
        self.region = region
        self.account_id = account_id
        self.physical: Mapping[str, PhysicalResource] = physical if physical is not None else {}
        self.parameter_overrides = dict(parameter_overrides or {})
        self.name_prefix = name_prefix
        self.stack_name = stack_name
        self._conditions: dict[str, bool] = {}
        unknown = set(self.parameter_overrides) - set(template.parameters)
        if unknown:
            raise TemplateError(f"parameter overrides for unknown parameters: {sorted(unknown)}")

    @property
    def partition(self) -> str:
        """The AWS partition of the region."""
        if self.region.startswith("cn-"):
            return "aws-cn"
        if self.region.startswith("us-gov-"):
            return "aws-us-gov"
        return "aws"

    @property
    def url_suffix(self) -> str:
        """``AWS::URLSuffix``."""
        return "amazonaws.com.cn" if self.partition == "aws-cn" else "amazonaws.com"

    def parameter(self, name: str) -> Any:
        """The value of a template parameter (override, else default)."""
        spec = self.template.parameters.get(name)
        if spec is None:
            raise TemplateError(f"unknown parameter {name}")
        if name in self.parameter_overrides:
            value: Any = self.parameter_overrides[name]
        elif spec.default is not None:
            value = spec.default
        else:
            raise TemplateError(f"parameter {name} has no default and no override")
        if spec.type in ("CommaDelimitedList", "List<Number>") or spec.type.startswith("List<"):
            return value if isinstance(value, list) else [v.strip() for v in str(value).split(",")]
        # CloudFormation hands every scalar parameter to Ref as a string, numbers included.
        return str(value).lower() if isinstance(value, bool) else str(value)

    def condition(self, name: str) -> bool:
        """Evaluate a named condition of the ``Conditions`` section (memoised)."""
        if name not in self._conditions:
            conditions = self.template.document.get("Conditions") or {}
            if name not in conditions:
                raise TemplateError(f"unknown condition {name}")
            self._conditions[name] = bool(self._evaluate_condition(conditions[name]))
        return self._conditions[name]

    def resolve(self, value: Any) -> Any:
        """Resolve every intrinsic inside ``value`` (recursively); plain values pass through.

        Raises:
            TemplateError: an intrinsic that cannot be resolved locally.
        """
        if isinstance(value, list):
            items = [self.resolve(v) for v in value]
            return [v for v in items if v is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, arg),) = value.items()
            if key == "Ref" or key.startswith("Fn::"):
                return self._intrinsic(key, arg)
            if key == "Condition" and isinstance(arg, str):
                return self.condition(arg)
        resolved = {k: self.resolve(v) for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v is not NO_VALUE}

    def resolve_str(self, value: Any) -> str:
        """Resolve ``value`` and require a scalar; booleans become ``true``/``false``."""
        resolved = self.resolve(value)
        if isinstance(resolved, bool):
            return "true" if resolved else "false"
        if isinstance(resolved, str | int | float):
            return str(resolved)
        raise TemplateError(f"expected a scalar, got {resolved!r} from {value!r}")

    # -- intrinsics ------------------------------------------------------------------------

    def _intrinsic(self, key: str, arg: Any) -> Any:  # noqa: PLR0911, PLR0912 - one per function
        if key == "Ref":
            return self._ref(self._name(arg, key))
        if key == "Fn::GetAtt":
            if isinstance(arg, str):
                logical_id, _, attribute = arg.partition(".")
            else:
                logical_id, attribute = (self.resolve_str(a) for a in arg)
            return self._getatt(logical_id, attribute)
        if key == "Fn::Sub":
            return self._sub(arg)
        if key == "Fn::Join":
            delimiter, items = arg
            parts = self.resolve(items)
            return str(delimiter).join(self.resolve_str(p) for p in parts)
        if key == "Fn::Select":
            index, items = arg
            resolved = self.resolve(items)
            return resolved[int(self.resolve_str(index))]
        if key == "Fn::Split":
            delimiter, text = arg
            return self.resolve_str(text).split(str(delimiter))
        if key == "Fn::If":
            name, when_true, when_false = arg
            return self.resolve(when_true if self.condition(name) else when_false)
        if key == "Fn::FindInMap":
            return self._find_in_map(arg)
        if key == "Fn::Base64":
            return base64.b64encode(self.resolve_str(arg).encode()).decode()
        if key == "Fn::GetAZs":
            return [f"{self.region}{suffix}" for suffix in "abc"]
        if key in ("Fn::Equals", "Fn::Not", "Fn::And", "Fn::Or"):
            return self._evaluate_condition({key: arg})
        raise TemplateError(f"{key} cannot be resolved locally (argument {arg!r})")

    def _name(self, arg: Any, key: str) -> str:
        if not isinstance(arg, str):
            raise TemplateError(f"{key} needs a name, got {arg!r}")
        return arg

    def _ref(self, name: str) -> Any:
        pseudo = {
            "AWS::Region": self.region,
            "AWS::AccountId": self.account_id,
            "AWS::Partition": self.partition,
            "AWS::URLSuffix": self.url_suffix,
            "AWS::StackName": self.stack_name,
            "AWS::StackId": (
                f"arn:{self.partition}:cloudformation:{self.region}:{self.account_id}"
                f":stack/{self.stack_name}/00000000-0000-0000-0000-000000000000"
            ),
            "AWS::NotificationARNs": [],
        }
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in pseudo:
            return pseudo[name]
        if name in self.template.parameters:
            return self.parameter(name)
        if name in self.physical:
            return self.physical[name].ref
        resource = self.template.resources.get(name)
        if resource is None:
            raise TemplateError(f"Ref to unknown name {name}")
        if resource.type in API_TYPES:
            return local_api_id(name)
        if resource.type == FUNCTION_TYPE:
            return physical_name(self.name_prefix, name)
        raise TemplateError(f"Ref {name} ({resource.type}): not provisioned locally")

    def _getatt(self, logical_id: str, attribute: str) -> str:
        if logical_id in self.physical:
            attributes = self.physical[logical_id].attributes
            if attribute not in attributes:
                raise TemplateError(
                    f"GetAtt {logical_id}.{attribute}: unknown attribute "
                    f"(local resource has {sorted(attributes)})"
                )
            return attributes[attribute]
        resource = self.template.resources.get(logical_id)
        if resource is None:
            raise TemplateError(f"GetAtt on unknown resource {logical_id}")
        if resource.type == FUNCTION_TYPE and attribute == "Arn":
            name = physical_name(self.name_prefix, logical_id)
            return f"arn:{self.partition}:lambda:{self.region}:{self.account_id}:function:{name}"
        if resource.type in API_TYPES and attribute == "RootResourceId":
            return local_api_id(f"{logical_id}/root")
        raise TemplateError(
            f"GetAtt {logical_id}.{attribute} ({resource.type}): not provisioned locally"
        )

    def _sub(self, arg: Any) -> str:
        if isinstance(arg, str):
            text, variables = arg, {}
        else:
            text, raw_vars = arg
            variables = {k: self.resolve_str(v) for k, v in raw_vars.items()}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1).strip()
            if name.startswith("!"):
                # ${!Literal} writes a literal ${Literal}.
                return "${" + name[1:] + "}"
            if name in variables:
                return str(variables[name])
            if "." in name:
                logical_id, _, attribute = name.partition(".")
                return self._getatt(logical_id, attribute)
            value = self._ref(name)
            if isinstance(value, list):
                raise TemplateError(f"Fn::Sub: ${{{name}}} is a list")
            return str(value)

        return _SUB_VAR.sub(replace, str(text))

    def _find_in_map(self, arg: Any) -> Any:
        map_name, top, second = (self.resolve_str(a) for a in arg[:3])
        mappings = self.template.document.get("Mappings") or {}
        try:
            return mappings[map_name][top][second]
        except KeyError as exc:
            raise TemplateError(f"Fn::FindInMap {map_name}/{top}/{second}: not found") from exc

    def _evaluate_condition(self, expr: Any) -> Any:
        if isinstance(expr, dict) and len(expr) == 1:
            ((key, arg),) = expr.items()
            if key == "Fn::Equals":
                left, right = (self.resolve(a) for a in arg)
                return str(left) == str(right)
            if key == "Fn::Not":
                return not self._evaluate_condition(arg[0])
            if key == "Fn::And":
                return all(self._evaluate_condition(a) for a in arg)
            if key == "Fn::Or":
                return any(self._evaluate_condition(a) for a in arg)
            if key == "Condition":
                return self.condition(arg)
        return self.resolve(expr)

    def is_active(self, resource: ResourceDef) -> bool:
        """Whether a resource exists under the template's conditions."""
        return resource.condition is None or self.condition(resource.condition)


# --------------------------------------------------------------------------------------------
# Functions
# --------------------------------------------------------------------------------------------


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


# -- schedules ---------------------------------------------------------------------------------

_RATE: Final = re.compile(r"^rate\(\s*(\d+)\s+(minute|minutes|hour|hours|day|days)\s*\)$")
_CRON: Final = re.compile(r"^cron\((.*)\)$")
_AT: Final = re.compile(r"^at\((\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\)$")
_RATE_UNIT_S: Final = {"minute": 60, "hour": 3600, "day": 86400}
_MONTHS: Final = {
    name: number
    for number, name in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1
    )
}
_WEEKDAYS: Final = {
    name: number for number, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"), 1)
}
# (low, high, names) of the six cron fields, in order.
_CRON_FIELDS: Final[tuple[tuple[str, int, int, Mapping[str, int]], ...]] = (
    ("minutes", 0, 59, {}),
    ("hours", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 1, 7, _WEEKDAYS),
    ("year", 1970, 2199, {}),
)
_NOT_EMULATED: Final = re.compile(r"[LW#]")


def parse_schedule_expression(text: str, *, timezone: str = "UTC") -> ScheduleExpression:
    """Parse ``rate(N unit)``, ``cron(min hour dom month dow year)`` or ``at(yyyy-mm-ddThh:mm:ss)``.

    As EventBridge does: a rate of 1 takes a singular unit and any other value a plural one;
    a cron has six fields and exactly one of day-of-month and day-of-week is ``?``. Cron's
    ``L``, ``W`` and ``#`` are accepted but not emulated (that field allows every value; a
    warning says so).

    Args:
        text: the expression.
        timezone: IANA zone of cron and at() expressions (``ScheduleExpressionTimezone``).

    Raises:
        TemplateError: an expression EventBridge would refuse, or an unknown time zone.
    """
    expression = text.strip()
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise TemplateError(f"unknown time zone {timezone!r} for {text!r}") from exc
    rate = _RATE.match(expression)
    if rate:
        value, unit = int(rate.group(1)), rate.group(2)
        if value < 1:
            raise TemplateError(f"{text!r}: a rate must be a positive number")
        if (value == 1) == unit.endswith("s"):
            raise TemplateError(
                f"{text!r}: EventBridge wants the singular unit for 1 and the plural otherwise"
            )
        period = float(value * _RATE_UNIT_S[unit.rstrip("s")])
        return ScheduleExpression(expression, "rate", period_s=period, timezone=timezone)
    cron = _CRON.match(expression)
    if cron:
        return ScheduleExpression(
            expression, "cron", cron=_parse_cron(cron.group(1), text), timezone=timezone
        )
    at = _AT.match(expression)
    if at:
        moment = datetime.fromisoformat(at.group(1)).replace(tzinfo=ZoneInfo(timezone))
        return ScheduleExpression(expression, "at", at=moment.astimezone(UTC), timezone=timezone)
    raise TemplateError(
        f"{text!r} is not a schedule expression (rate(N unit), cron(6 fields) or at(...))"
    )


def _parse_cron(body: str, text: str) -> CronExpression:
    fields = body.split()
    if len(fields) != len(_CRON_FIELDS):
        raise TemplateError(f"{text!r}: cron needs 6 fields, got {len(fields)}")
    dom, dow = fields[2], fields[4]
    if (dom == "?") == (dow == "?"):
        raise TemplateError(f"{text!r}: exactly one of day-of-month and day-of-week must be '?'")
    values: list[frozenset[int] | None] = []
    approximate = False
    for raw, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        if raw == "?" and name in ("day-of-month", "day-of-week"):
            values.append(None)
        elif _NOT_EMULATED.search(raw):
            approximate = True
            logger.warning(
                "%s: %s %r uses L/W/#, which the local scheduler does not emulate; "
                "that field matches every value locally",
                text,
                name,
                raw,
            )
            values.append(frozenset(range(low, high + 1)))
        else:
            values.append(_cron_field(raw, low, high, names, f"{text!r} {name}"))
    minutes, hours, days, months, weekdays, years = values
    # Only the two day fields can be None ("?").
    assert minutes is not None  # noqa: S101
    assert hours is not None  # noqa: S101
    assert months is not None  # noqa: S101
    assert years is not None  # noqa: S101
    return CronExpression(minutes, hours, days, months, weekdays, years, approximate)


def _cron_value(token: str, names: Mapping[str, int], where: str) -> int:
    upper = token.upper()
    if upper in names:
        return names[upper]
    if not token.isdigit():
        raise TemplateError(f"{where}: {token!r} is not a number")
    return int(token)


def _cron_field(
    raw: str, low: int, high: int, names: Mapping[str, int], where: str
) -> frozenset[int]:
    allowed: set[int] = set()
    for part in raw.split(","):
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise TemplateError(f"{where}: bad increment in {part!r}")
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            first, _, last = base.partition("-")
            start, end = _cron_value(first, names, where), _cron_value(last, names, where)
        else:
            start = _cron_value(base, names, where)
            # "5/15" means from 5 to the end of the range, every 15.
            end = high if slash else start
        if not low <= start <= end <= high:
            raise TemplateError(f"{where}: {part!r} is outside {low}-{high} (or reversed)")
        allowed.update(range(start, end + 1, step))
    return frozenset(allowed)


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
