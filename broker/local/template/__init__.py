"""Read ``template.yaml`` the way the local stack needs it.

A small package, one module per question a reader of the template asks:

* :mod:`~broker.local.template.model`: the errors, the resource types treated specially and
  the typed view of a template (:class:`Template`, :class:`ResourceDef`,
  :class:`PhysicalResource`), plus deterministic local names;
* :mod:`~broker.local.template.loader`: :func:`load_template` parses the SAM/CloudFormation file
  with a YAML loader that turns the short-form intrinsic tags (``!Ref``, ``!GetAtt``, ``!Sub`` …)
  into their long form, so the rest of the code only ever sees one shape;
* :mod:`~broker.local.template.intrinsics`: :class:`Resolver` evaluates the intrinsics that matter
  locally (``Ref``, ``Fn::GetAtt``, ``Fn::Sub`` and the few pure functions around them) against
  parameters, pseudo parameters and the physical ids of what :mod:`broker.local.provision`
  created;
* :mod:`~broker.local.template.functions`: :func:`read_functions` extracts each
  ``AWS::Serverless::Function`` (handler, merged and resolved environment, SQS, Api and
  Schedule/ScheduleV2 events) as typed dataclasses;
* :mod:`~broker.local.template.schedules`: :func:`parse_schedule_expression` reads EventBridge's
  ``rate(...)``, ``cron(...)`` and ``at(...)`` expressions, and :class:`CronExpression` computes
  when a cron schedule fires.

Import from here (``from broker.local.template import load_template``): this module re-exports
every public name of the package. Nothing in it talks to the network; it is pure and
unit-tested against the real ``template.yaml``.
"""

from __future__ import annotations

from broker.local.template.functions import (
    ApiEventDef,
    FunctionDef,
    ScheduleEventDef,
    SqsEventDef,
    api_stage,
    read_functions,
)
from broker.local.template.intrinsics import NO_VALUE, Resolver, references
from broker.local.template.loader import load_template, load_yaml, template_from_document
from broker.local.template.model import (
    API_TYPES,
    DEFAULT_NAME_PREFIX,
    FUNCTION_TYPE,
    PROVISIONED_TYPES,
    LocalStackError,
    ParameterDef,
    PhysicalResource,
    ResourceDef,
    Template,
    TemplateError,
    local_api_id,
    physical_name,
)
from broker.local.template.schedules import (
    CronExpression,
    ScheduleExpression,
    parse_schedule_expression,
)

__all__ = [
    "API_TYPES",
    "DEFAULT_NAME_PREFIX",
    "FUNCTION_TYPE",
    "NO_VALUE",
    "PROVISIONED_TYPES",
    "ApiEventDef",
    "CronExpression",
    "FunctionDef",
    "LocalStackError",
    "ParameterDef",
    "PhysicalResource",
    "Resolver",
    "ResourceDef",
    "ScheduleEventDef",
    "ScheduleExpression",
    "SqsEventDef",
    "Template",
    "TemplateError",
    "api_stage",
    "load_template",
    "load_yaml",
    "local_api_id",
    "parse_schedule_expression",
    "physical_name",
    "read_functions",
    "references",
    "template_from_document",
]
