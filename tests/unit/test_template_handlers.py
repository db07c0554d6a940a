"""Every function in template.yaml points at a handler that exists and imports without AWS."""

from __future__ import annotations

import importlib

import pytest

from broker.local.template import ResourceDef, load_template
from tests.conftest import TEMPLATE

FUNCTIONS = load_template(TEMPLATE).of_type("AWS::Serverless::Function")


@pytest.mark.parametrize("function", FUNCTIONS, ids=lambda f: f.logical_id)
def test_template_handler_imports_and_is_callable(function: ResourceDef) -> None:
    # GIVEN a function's Handler: entry / WHEN its module is imported
    handler_path = function.properties["Handler"]
    module_name, _, attribute = handler_path.rpartition(".")
    module = importlib.import_module(module_name)
    # THEN the named handler exists and is callable
    assert callable(getattr(module, attribute))
