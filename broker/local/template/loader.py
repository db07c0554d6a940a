"""Parse ``template.yaml`` into a :class:`~broker.local.template.model.Template`.

This module owns reading the file: a YAML loader (a ``SafeLoader`` subclass) that understands
CloudFormation's short-form intrinsic tags (``!Ref``, ``!GetAtt``, ``!Sub`` …) and turns each into
its long form (``{"Ref": …}``, ``{"Fn::GetAtt": [...]}``, ``{"Fn::Sub": …}``), so the rest of the
code only ever sees one shape; :func:`load_template` reads a file with it, and
:func:`template_from_document` builds the typed view of the ``Parameters`` and ``Resources``
sections of an already parsed document. Nothing is resolved here: that is
:mod:`broker.local.template.intrinsics`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import yaml

from broker.local.template.model import ParameterDef, ResourceDef, Template, TemplateError

__all__ = ["load_template", "load_yaml", "template_from_document"]

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
