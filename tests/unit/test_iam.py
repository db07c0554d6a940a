"""Least privilege derived from the code (issue 13): ``broker/adapters/permissions.py`` lists
every AWS call the code makes and which functions make it; these tests hold it to the source
(no unregistered call, no stale entry, the functions' wiring) and to AWS's action catalogue.
``test_iam_template.py`` then holds template.yaml to it."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import json
import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import botocore.session
import cfnlint
import pytest
from botocore import xform_name

from broker.adapters import permissions
from broker.adapters.permissions import CALLS, FUNCTIONS, IAM_NAME_EXCEPTIONS, LIBRARY_CALLERS
from broker.local.template import load_template
from tests.conftest import TEMPLATE

ROOT = Path(__file__).resolve().parents[2]
#: Where AWS calls may live: the adapters and the runners (STYLE.md: the only boto3 importers).
CALLING_PACKAGES = ("broker/adapters", "broker/runners")
#: Calls whose first argument names the operation.
_BY_NAME = ("generate_presigned_url", "get_paginator")
#: DynamoDB transaction items and the action each needs.
_TRANSACTION_ITEMS = {
    "Put": "dynamodb:PutItem",
    "Update": "dynamodb:UpdateItem",
    "Delete": "dynamodb:DeleteItem",
    "ConditionCheck": "dynamodb:ConditionCheckItem",
}


def module_path(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    assert spec is not None, module
    assert spec.origin is not None, module
    return Path(spec.origin)


@cache
def services() -> frozenset[str]:
    """The AWS services the broker builds clients for (``client("sqs")``, ...) in its code."""
    found: set[str] = set()
    for path in (ROOT / "broker").rglob("*.py"):
        if "local" in path.relative_to(ROOT).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name | ast.Attribute)
                and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
                in ("client", "regional_client")
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                found.add(str(node.args[0].value))
    return frozenset(found)


@cache
def operations() -> frozenset[str]:
    """Every operation of those services, as boto3 names its client methods."""
    session = botocore.session.get_session()
    return frozenset(
        xform_name(operation)
        for service in services()
        for operation in session.get_service_model(service).operation_names
    )


def client_calls(source: str) -> set[str]:
    """The AWS client methods a module's source calls or passes on (``x.put_item``), with
    ``generate_presigned_url``/``get_paginator`` keyed by the operation they name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _BY_NAME
        ):
            (name,) = node.args[:1] or [ast.Constant("?")]
            found.add(f"{node.func.attr}:{name.value if isinstance(name, ast.Constant) else '?'}")
        elif isinstance(node, ast.Attribute) and node.attr in operations():
            found.add(node.attr)
    return found


def calling_modules() -> dict[str, set[str]]:
    """Every module of the calling packages, with the client methods its source uses."""
    found: dict[str, set[str]] = {}
    for package in CALLING_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[module] = client_calls(path.read_text(encoding="utf-8"))
    return found


# -- the registry matches the source --------------------------------------------------------


def test_the_broker_builds_clients_for_the_services_it_is_known_to_call() -> None:
    # GIVEN / WHEN the services named in client(...) calls are collected
    # THEN they are the ones the registry's actions name (a new service is noticed here)
    assert services() == {
        "cloudformation", "dynamodb", "ec2", "s3", "secretsmanager", "sns", "sqs", "ssm",
    }  # fmt: skip


def test_every_aws_call_in_an_adapter_or_runner_is_registered_and_nothing_stale() -> None:
    # GIVEN every module of broker/adapters and broker/runners, read as source
    found = calling_modules()
    # WHEN its client calls are compared with the registry
    for module, calls in found.items():
        registered = set(CALLS.get(module, {}))
        # THEN each module calls exactly what the registry lists for it
        assert calls == registered, f"{module}: unregistered {calls - registered}, "
        f"stale {registered - calls}"
    # AND every registered module outside the libraries' callers exists in those packages
    assert set(CALLS) - set(LIBRARY_CALLERS) <= set(found)


def test_a_new_client_call_is_seen_by_the_scan() -> None:
    # GIVEN an adapter's source with one call more than the sqs module registers
    source = module_path("broker.adapters.sqs").read_text(encoding="utf-8")
    added = source + "\n\ndef purge(sqs):\n    sqs.purge_queue(QueueUrl='x')\n"
    # WHEN it is scanned
    # THEN the new call is found, and it is not in the registry: the test above would fail
    assert client_calls(added) - set(CALLS["broker.adapters.sqs"]) == {"purge_queue"}
    # AND a method passed on without being called, or a presigned operation, counts as well
    assert client_calls("w(self.client.delete_item)") == {"delete_item"}
    assert client_calls("s3.generate_presigned_url('head_object')") == {
        "generate_presigned_url:head_object"
    }


def test_libraries_make_the_calls_registered_for_the_modules_that_give_them_our_client() -> None:
    for module, library in LIBRARY_CALLERS.items():
        # GIVEN the library module that uses the client ours passes it
        calls = client_calls(module_path(library).read_text(encoding="utf-8"))
        # THEN every call registered for our module is one the library makes
        assert set(CALLS[module]) <= calls, module
        # AND our module does hand a client to the library
        assert "client(" in module_path(module).read_text(encoding="utf-8")


def test_transactions_need_the_actions_of_the_items_they_write() -> None:
    # GIVEN the transaction items (Put, Update, Delete, ConditionCheck) the DynamoDB stores build
    kinds: set[str] = set()
    for path in (ROOT / "broker/adapters/dynamodb").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Dict):
                kinds |= {
                    k.value
                    for k in node.keys
                    if isinstance(k, ast.Constant) and k.value in _TRANSACTION_ITEMS
                }
    # THEN transact_write_items is granted exactly those items' actions
    granted = {g.action for g in CALLS["broker.adapters.dynamodb.table"]["transact_write_items"]}
    assert granted == {_TRANSACTION_ITEMS[k] for k in kinds}


# -- the registry matches AWS's catalogue of actions ----------------------------------------


@cache
def catalogue() -> dict[str, dict[str, list[str]]]:
    """IAM actions per service prefix (lower case) -> the resource types each may be scoped to
    (cfn-lint's copy of the Service Authorization Reference)."""
    path = Path(cfnlint.__file__).parent / "data" / "AdditionalSpecs" / "Policies.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    return {
        prefix: {
            action: [r.lower() for r in spec.get("Resources", [])]
            for action, spec in service["Actions"].items()
        }
        for prefix, service in data.items()
    }


def _camel(method: str) -> str:
    return "".join(part.capitalize() for part in method.split("_"))


def registered_grants() -> Iterable[tuple[str, str, permissions.Grant]]:
    for module, calls in CALLS.items():
        for method, grants in calls.items():
            for grant in grants:
                yield module, method, grant


def test_each_action_is_its_operation_in_camel_case_unless_an_exception_says_why() -> None:
    for module, method, grant in registered_grants():
        # GIVEN a registered call and one action it needs
        name = grant.action.split(":", 1)[1]
        # THEN the action is the method's operation, or the method is a documented exception
        assert name == _camel(method) or method in IAM_NAME_EXCEPTIONS, (module, method, grant)


def test_every_action_exists_and_is_scoped_to_a_resource_type_aws_allows() -> None:
    for module, method, grant in [
        *registered_grants(),
        *(("platform", "", g) for g in permissions.PLATFORM_LOGS),
        *(("platform", "", g) for g in permissions.PLATFORM_TRACING),
        *(("platform", "", g) for g in permissions.PLATFORM_SQS_EVENT),
    ]:
        prefix, name = grant.action.split(":", 1)
        # GIVEN the catalogue's entry of the action
        types = catalogue()[prefix].get(name.lower())
        # THEN it exists
        assert types is not None, (module, method, grant.action)
        # AND "any" is kept for actions AWS authorizes on no resource; others name a type it has
        if grant.kind == "any":
            assert types == [], (module, method, grant.action, types)
        else:
            assert grant.kind in types, (module, method, grant.action, types)


# -- which functions make which calls: derived from the handlers and the wiring ------------


def _imports(path: Path) -> dict[str, str]:
    """name -> module of every ``from x import name`` in the file (at any depth), and
    module -> module of every ``import x``."""
    found: dict[str, str] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                found[alias.asname or alias.name] = node.module
        elif isinstance(node, ast.Import):
            found.update({a.name: a.name for a in node.names})
    return found


def _is_ours(module: str) -> bool:
    # broker.local is the local stack (never deployed); the wiring is read factory by factory.
    return module.split(".", maxsplit=1)[0] in ("broker", "workers") and not module.startswith(
        ("broker.local", "broker.wiring")
    )


def _submodule(module: str, name: str) -> str:
    candidate = f"{module}.{name}"
    return candidate if importlib.util.find_spec(module) and _exists(candidate) else module


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _borrowed(module: str, name: str) -> dict[str, str]:
    """The imports that one top-level function of a module references, following the module's
    other top-level functions it calls (a worker borrowing a helper of another worker)."""
    tree = ast.parse(module_path(module).read_text(encoding="utf-8"))
    defs = {
        node.name: node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    imported = _imports(module_path(module))
    found: dict[str, str] = {}
    todo, seen = [name], set()
    while todo:
        current = todo.pop()
        if current in seen or current not in defs:
            continue
        seen.add(current)
        for node in ast.walk(defs[current]):
            if isinstance(node, ast.Name):
                todo.append(node.id)
                if node.id in imported:
                    found[node.id] = imported[node.id]
    return found


def import_closure(start: str) -> tuple[set[str], set[str]]:
    """The broker modules ``start`` imports, transitively (stopping at the wiring), and the
    names it imports from ``broker.wiring``. A name imported from another worker module brings
    only what that function references, not the other worker's whole module."""
    seen: set[str] = set()
    wired: set[str] = set()
    todo: list[tuple[str, dict[str, str] | None]] = [(start, None)]
    while todo:
        module, only = todo.pop()
        if only is None:
            if module in seen:
                continue
            seen.add(module)
        for name, source in (_imports(module_path(module)) if only is None else only).items():
            if source == "broker.wiring":
                wired.add(name)
            elif source.startswith("workers.") and source not in (name, module):
                todo.append((source, _borrowed(source, name)))
            elif _is_ours(source):
                todo.append((_submodule(source, name) if source != name else source, None))
    return seen, wired


def wired_names(factories: set[str]) -> dict[str, str]:
    """The imported names (name -> module) that the named factories of broker/wiring.py use,
    following the factories they call."""
    path = module_path("broker.wiring")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {
        node.name: {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
    }
    imported = _imports(path)
    found: dict[str, str] = {}
    todo, seen = list(factories), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for used in names.get(name, set()):
            if used in names:
                todo.append(used)
            if used in imported:
                found[used] = imported[used]
    return found


def wired_modules(factories: set[str]) -> set[str]:
    """The modules (and their bases' modules) of the adapter classes that the named factories
    of broker/wiring.py build."""
    wiring = importlib.import_module("broker.wiring")
    modules: set[str] = set()
    for used, source in wired_names(factories).items():
        if source.startswith(("broker.adapters", "broker.runners")):
            target = getattr(wiring, used, None) or getattr(importlib.import_module(source), used)
            if inspect.isclass(target):
                modules |= {base.__module__ for base in inspect.getmro(target)}
    return modules


def handlers() -> dict[str, str]:
    template = load_template(TEMPLATE)
    return {
        f.logical_id: f.properties["Handler"] for f in template.of_type("AWS::Serverless::Function")
    }


def derived_modules(handler: str) -> set[str]:
    """The calling modules a function's handler reaches: directly, or through the wiring."""
    closure, wired = import_closure(handler.rsplit(".", 1)[0])
    return (closure | wired_modules(wired)) & set(CALLS)


def test_every_function_of_the_template_is_declared() -> None:
    assert set(FUNCTIONS) == set(handlers())


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_a_function_declares_exactly_the_calling_modules_its_handler_wires(function: str) -> None:
    # GIVEN the function's handler in template.yaml
    handler = handlers()[function]
    # WHEN the modules that call AWS are derived from its imports and the wiring's factories
    derived = derived_modules(handler)
    # THEN the registry declares the function's use of exactly those
    declared = {use.module for use in FUNCTIONS[function]}
    assert declared == derived, f"missing {derived - declared}, not wired {declared - derived}"


def test_the_api_reaches_the_idempotency_and_token_modules_and_workers_do_not() -> None:
    # GIVEN / WHEN the modules are derived for the API and for the job worker
    api = derived_modules(handlers()["ApiFunction"])
    worker = derived_modules(handlers()["JobWorkerFunction"])
    # THEN the derivation tells them apart (it is not "everything")
    assert {"broker.api.idempotency", "broker.api.tokens"} <= api
    assert "broker.runners.ssm" not in api
    assert "broker.runners.ssm" in worker
    assert not {"broker.api.idempotency", "broker.api.tokens"} & worker


def test_a_partial_use_names_real_calls_and_says_why() -> None:
    for function, uses in FUNCTIONS.items():
        for use in uses:
            if use.calls is not None:
                assert set(use.calls) <= set(CALLS[use.module]), (function, use.module)
                assert use.why, (function, use.module)


def test_every_registered_call_is_made_by_some_function() -> None:
    # GIVEN every (module, call) of the registry
    registered = {(m, c) for m, calls in CALLS.items() for c in calls}
    # WHEN the calls the functions use are collected
    used = {
        (use.module, call)
        for uses in FUNCTIONS.values()
        for use in uses
        for call in (CALLS[use.module] if use.calls is None else use.calls)
    }
    # THEN none is left over (a permission nothing uses)
    assert registered == used


def test_required_binds_every_kind_a_function_reaches() -> None:
    for function in FUNCTIONS:
        # THEN each function's required set resolves (no call needs an unbound resource kind)
        required = permissions.required(function)
        assert required
        assert all(re.match(r"^[a-z0-9-]+:[A-Za-z]+$", action) for action, _ in required)
