"""Evaluate CloudFormation intrinsic functions against local facts.

This module owns resolution: :class:`Resolver` evaluates ``Ref``, ``Fn::GetAtt``, ``Fn::Sub``
and the few pure functions around them (``Fn::Join``, ``Fn::If`` with the template's
``Conditions`` …) against parameters (overrides, else defaults), pseudo parameters and the
physical ids of what :mod:`broker.local.provision` created; :func:`references` lists the logical
ids a value depends on, which is how provisioning orders resources. An intrinsic that only makes
sense in a real account (``Fn::ImportValue`` …) raises
:class:`~broker.local.template.model.TemplateError`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any, Final

from broker.local.template.model import (
    API_TYPES,
    DEFAULT_NAME_PREFIX,
    FUNCTION_TYPE,
    PhysicalResource,
    ResourceDef,
    Template,
    TemplateError,
    local_api_id,
    physical_name,
)

__all__ = ["NO_VALUE", "Resolver", "references"]

_SUB_VAR: Final = re.compile(r"\$\{([^}]*)\}")


class _NoValue:
    """``AWS::NoValue``: removes the enclosing property."""

    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE: Final = _NoValue()


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
