"""template.yaml sets what each function's settings require, and tells each function about
exactly the resources its role may use (issue 13, "Checks in CI").

Which settings a function reads is derived as its permissions are (``test_iam.py``): from its
handler's imports and the factories of ``broker/wiring.py`` it uses.
"""

from __future__ import annotations

import importlib
import typing
from typing import Any

import pytest
from pydantic_settings import BaseSettings

from broker.local.template import load_template
from tests.conftest import TEMPLATE
from tests.unit.test_iam import _imports, handlers, import_closure, module_path, wired_names
from tests.unit.test_template_iam import canonical, granted, sqs_event_queues

T = load_template(TEMPLATE)
FUNCTIONS = {f.logical_id: f for f in T.of_type("AWS::Serverless::Function")}


def settings_models(function: str) -> set[type[BaseSettings]]:
    """The settings models whose factories (``broker.settings.*_settings``) the function
    reaches."""
    closure, wired = import_closure(handlers()[function].rsplit(".", 1)[0])
    used = {name for name, source in wired_names(wired).items() if source == "broker.settings"}
    for module in closure:
        used |= {n for n, src in _imports(module_path(module)).items() if src == "broker.settings"}
    settings = importlib.import_module("broker.settings")
    models: set[type[BaseSettings]] = set()
    for name in used:
        factory = getattr(settings, name)
        if name.endswith("_settings") and callable(factory):
            models.add(typing.get_type_hints(factory.__wrapped__)["return"])
    return models


def environment(function: str) -> dict[str, Any]:
    merged = dict(T.globals_function["Environment"]["Variables"])
    merged.update((FUNCTIONS[function].properties.get("Environment") or {}).get("Variables", {}))
    return merged


def required_variables(model: type[BaseSettings]) -> set[str]:
    prefix = str(model.model_config.get("env_prefix", ""))
    return {
        field.validation_alias
        if isinstance(field.validation_alias, str)
        else f"{prefix}{name}".upper()
        for name, field in model.model_fields.items()
        if field.is_required()
    }


def test_the_settings_derivation_finds_each_functions_own_model() -> None:
    # GIVEN / WHEN the settings models are derived per function
    names = {f: {m.__name__ for m in settings_models(f)} for f in FUNCTIONS}
    # THEN each function reads its own model (and the API its identity and token settings)
    assert {"ApiSettings", "IdentitySettings", "PageTokenSettings"} <= names["ApiFunction"]
    assert "JobWorkerSettings" in names["JobWorkerFunction"]
    assert "SweeperSettings" in names["SweeperFunction"]
    assert "ClusterWorkerSettings" in names["ClusterWorkerFunction"]
    assert "ApiSettings" not in names["JobWorkerFunction"]


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_every_required_setting_is_set_by_the_template(function: str) -> None:
    # GIVEN the settings models the function reads, and its environment (globals merged)
    env = environment(function)
    for model in settings_models(function):
        # THEN every field without a default has its variable set (AWS_REGION: by Lambda)
        missing = required_variables(model) - set(env) - {"AWS_REGION"}
        assert not missing, (model.__name__, missing)


def _resources_in(value: Any) -> set[str]:
    if isinstance(value, dict):
        if "Ref" in value:
            return {value["Ref"]} if value["Ref"] in T.resources else set()
        if "Fn::GetAtt" in value:
            return {value["Fn::GetAtt"][0]}
        return {r for v in value.values() for r in _resources_in(v)}
    if isinstance(value, list):
        return {r for v in value for r in _resources_in(v)}
    return set()


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_a_function_is_told_about_exactly_the_resources_its_role_may_use(function: str) -> None:
    # GIVEN the template resources named in the function's environment, and its event queues
    told = _resources_in(environment(function)) | sqs_event_queues(function)
    # WHEN the template resources its role grants on are collected (its log group aside)
    on = {canonical(r).split("/")[0] for _, r in granted(function)} & set(T.resources)
    # THEN they are the same: no setting names a resource the function may not use, and no
    # grant is on a resource the function has no way to find
    assert on - {f"{function}LogGroup"} == told
