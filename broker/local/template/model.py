"""The typed view of a template, and the names every part of the local stack shares.

This module owns the vocabulary: the errors of the local stack (:class:`LocalStackError`, the base
of every error it raises on purpose, and :class:`TemplateError`), the resource types it
treats specially (functions, REST APIs, the types :mod:`broker.local.provision` creates), the
frozen dataclasses a loaded template is made of (:class:`Template`, :class:`ParameterDef`,
:class:`ResourceDef`) and what a created resource resolves to (:class:`PhysicalResource`), plus
the deterministic local names (:func:`physical_name`, :func:`local_api_id`). It imports nothing
else of the package, so every other module of it can import from here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

__all__ = [
    "API_TYPES",
    "DEFAULT_NAME_PREFIX",
    "FUNCTION_TYPE",
    "PROVISIONED_TYPES",
    "LocalStackError",
    "ParameterDef",
    "PhysicalResource",
    "ResourceDef",
    "Template",
    "TemplateError",
    "local_api_id",
    "physical_name",
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


class LocalStackError(Exception):
    """Base of every error the local stack raises on purpose."""


class TemplateError(LocalStackError):
    """The template cannot be read, or an intrinsic cannot be resolved locally."""


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


def physical_name(prefix: str, logical_id: str) -> str:
    """The deterministic local name of a resource: ``<prefix>-<LogicalId>``."""
    return f"{prefix}-{logical_id}"


def local_api_id(logical_id: str) -> str:
    """A stable, API-Gateway-shaped (10 lowercase alphanumerics) id for a local REST API."""
    return hashlib.sha256(logical_id.encode()).hexdigest()[:10]
