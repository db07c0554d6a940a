"""Schemathesis against the API handler in-process: the OpenAPI document is the contract.

The handler runs behind :class:`broker.local.apigw.ApiGatewayApp` (genuine API Gateway REST proxy
events) as a WSGI app, so schemathesis calls it without sockets. Its backends are the template's
table and queues on moto (over HTTP); no worker runs, so what is accepted stays ACCEPTED.

``make test`` runs a bounded budget (``tests/functional/test_fuzz_api.py``); ``make fuzz`` runs
``python -m tests.functional.fuzz_harness`` with a long one and stateful links (job ids from
POSTs feed GET, DELETE and output).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Powertools reads these when broker.observability is first imported (as tests/conftest.py).
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "HpcBrokerFuzz")
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "hpc-broker-fuzz")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "CRITICAL")

import requests
import schemathesis
from schemathesis.engine import events as engine_events
from schemathesis.engine import from_schema

from broker.api.common import CLUSTER_PATTERN
from broker.api.idempotency import KEY_PATTERN
from broker.local.apigw import ApiGatewayApp, ApiRoute
from broker.schema import NEXT_TOKEN_PATTERN

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account

PRINCIPAL = "arn:aws:iam::123456789012:user/fuzzer"
#: What schemathesis sends as the sigv4 Authorization header (not verified locally).
SIGNATURE = "AWS4-HMAC-SHA256 Credential=AKIDFUZZ/20260101/us-east-1/execute-api/aws4_request"
#: The checks every answer must pass (the brief's list; 0 failures allowed).
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
)
#: Statuses that reject a schema-violating request: schemathesis' defaults plus 413 (a body or
#: script over its documented size is refused with 413, and that is a rejection too).
NEGATIVE_REJECTED = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "429"]


@dataclass
class FuzzReport:
    """What one run did: cases per phase, and each distinct failure."""

    cases: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.cases.values())


def api_app() -> ApiGatewayApp:
    """The API handler behind the local API Gateway adapter (import after the environment)."""
    from broker.api.handler import lambda_handler  # noqa: PLC0415 - reads settings at import

    route = ApiRoute("/{proxy+}", "ANY", lambda_handler, "ApiFunction")
    # As AWS_IAM auth does, a call without Authorization gets API Gateway's 403 (the schema
    # requires the header); the signature itself is not checked locally.
    return ApiGatewayApp([route], default_principal=PRINCIPAL, require_authorization=True)


def config(
    *, max_examples: int, stateful: bool, seed: int | None, max_time: int | None = None
) -> schemathesis.Config:
    """Schemathesis configuration: the phases, budget and checks of a run."""
    checks: dict[str, Any] = {"enabled": False}
    for name in CHECKS:
        checks[name] = {"enabled": True}
    checks["negative_data_rejection"]["expected-statuses"] = NEGATIVE_REJECTED
    data: dict[str, Any] = {
        "checks": checks,
        "generation": {"max-examples": max_examples, "mode": "all"},
        "phases": {
            "examples": {"enabled": True},
            "coverage": {"enabled": True},
            "fuzzing": {"enabled": True},
            "stateful": {"enabled": stateful},
        },
        "auth": {"openapi": {"sigv4": {"api_key": SIGNATURE}}},
        "suppress-health-check": ["all"],
        "output": {"sanitization": {"enabled": False}},
    }
    if seed is not None:
        data["seed"] = seed
    if max_time is not None:
        data["max-time"] = max_time
    return schemathesis.Config.from_dict(data)


def _as_a_client_would(_context: Any, case: Any) -> Any:
    """Two values only the server or a careful client makes, made as they would be.

    - ``next_token``: the API issues it (and checks it, 422 otherwise); a client cannot make
      one, so a well-formed one is dropped (a malformed one stays: it must be refused).
    - the cluster of a job route: only ``local`` exists, so a well-formed name becomes
      ``local`` (else nearly every job call would stop at 404 CLUSTER_NOT_FOUND).
    - ``Idempotency-Key``: a client uses a new key per request; reusing one with another body
      is its mistake (422 ``IDEMPOTENCY_KEY_REUSED``, tested in test_idempotency.py). A
      well-formed key becomes unique.
    """
    query = case.query or {}
    token = query.get("next_token")
    if isinstance(token, str) and re.fullmatch(NEXT_TOKEN_PATTERN, token):
        case.query = {k: v for k, v in query.items() if k != "next_token"}
    cluster = (case.path_parameters or {}).get("cluster")
    if "/jobs" in case.path and isinstance(cluster, str) and re.fullmatch(CLUSTER_PATTERN, cluster):
        case.path_parameters = {**case.path_parameters, "cluster": "local"}
    headers = case.headers or {}
    for name, value in list(headers.items()):
        if name.lower() == "idempotency-key" and re.fullmatch(KEY_PATTERN, str(value)):
            headers[name] = uuid.uuid4().hex
    return case


def run(app: Any, cfg: schemathesis.Config) -> FuzzReport:
    """Run every phase against ``app``; collect cases and distinct failures."""
    schema = schemathesis.openapi.from_wsgi(
        "/v1/openapi.json", app, config=cfg, headers={"Authorization": SIGNATURE}
    )
    schema.hook("map_case")(_as_a_client_would)
    report = FuzzReport()
    seen: set[str] = set()
    for event in from_schema(schema).execute():
        if isinstance(event, engine_events.ScenarioFinished):
            if os.environ.get("FUZZ_PROGRESS"):
                print(
                    f"{event.phase.value} {event.recorder.label} {len(event.recorder.cases)} "
                    f"{event.elapsed_time:.1f}s",
                    file=sys.stderr,
                    flush=True,
                )
            phase = str(event.phase.value)
            report.cases[phase] = report.cases.get(phase, 0) + len(event.recorder.cases)
            for case_id, checks in event.recorder.checks.items():
                for check in checks:
                    if check.failure_info is None:
                        continue
                    case = event.recorder.cases[case_id].value
                    failure = check.failure_info.failure
                    key = f"{event.recorder.label} | {check.name} | {failure.title}"
                    if key in seen:
                        continue
                    seen.add(key)
                    interaction = event.recorder.interactions.get(case_id)
                    answer = ""
                    if interaction is not None and interaction.response is not None:
                        response = interaction.response
                        answer = f"{response.status_code} {response.content[:300]!r}"
                    report.failures.append(
                        f"{key}\n    {failure.message[:400]}\n    answer: {answer}\n"
                        f"    reproduce: {case.as_curl_command()[:600]}"
                    )
        elif isinstance(event, engine_events.NonFatalError):
            report.errors.append(f"{event.label}: {event.info.message}")
        elif isinstance(event, engine_events.FatalError):
            report.errors.append(f"fatal: {event.exception!r}")
    return report


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block, then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def fuzz_stack(moto_url: str | None = None) -> Iterator[ApiGatewayApp]:
    """The API on the template's table and queues in moto (a server of its own if no URL).

    The environment is the ApiFunction's, resolved from ``template.yaml``; local cluster mode
    with one cluster, ``local``. No worker runs.
    """
    from moto.server import ThreadedMotoServer  # noqa: PLC0415

    from broker import wiring  # noqa: PLC0415
    from broker.adapters import aws  # noqa: PLC0415
    from broker.adapters.dynamodb.users import DynamoUserMappings  # noqa: PLC0415
    from broker.local.moto_patches import patch_moto  # noqa: PLC0415
    from broker.local.provision import provision  # noqa: PLC0415
    from broker.local.template import load_template, read_functions  # noqa: PLC0415
    from broker.settings import api_settings  # noqa: PLC0415
    from broker.users.models import MappingBody  # noqa: PLC0415
    from broker.users.service import UserAdmin  # noqa: PLC0415

    server = None
    if moto_url is None:
        patch_moto()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        moto_url = f"http://{host}:{port}"
    aws_env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL": moto_url,
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "HpcBrokerFuzz",
        "POWERTOOLS_SERVICE_NAME": "hpc-broker-fuzz",
        # A client mistake is logged below ERROR; the fuzz would drown the output otherwise.
        "POWERTOOLS_LOG_LEVEL": "CRITICAL",
    }
    try:
        with environment(aws_env):
            requests.post(f"{moto_url}/moto-api/reset", timeout=10).raise_for_status()
            template = load_template(TEMPLATE)
            provisioned = provision(
                template, region=REGION, account_id=ACCOUNT, endpoint_url=moto_url
            )
            function = next(
                f
                for f in read_functions(template, provisioned.resolver)
                if f.logical_id == "ApiFunction"
            )
            env = {
                **function.environment,
                "HPCB_CLUSTERS_MODE": "local",
                "HPCB_LOCAL_CLUSTERS": "local",
                # The fuzzer administers the mappings (so the admin routes are exercised too)
                # and runs as a user on "local" (else every job write would be 403 NOT_MAPPED).
                "HPCB_ADMIN_PRINCIPALS": PRINCIPAL,
            }
            with environment(env):
                aws.client.cache_clear()
                api_settings.cache_clear()
                wiring.reset()
                UserAdmin(DynamoUserMappings(aws.client("dynamodb"), env["HPCB_TABLE_NAME"])).put(
                    PRINCIPAL, "local", MappingBody(principal=PRINCIPAL, user="hpcb-dev")
                )
                try:
                    yield api_app()
                finally:
                    wiring.reset()
                    api_settings.cache_clear()
                    aws.client.cache_clear()
    finally:
        if server is not None:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    """``make fuzz``: a long run on a moto server of this process, with stateful links."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-examples", type=int, default=300)
    parser.add_argument("--max-time", type=int, default=600, help="seconds")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-stateful", action="store_true")
    args = parser.parse_args(argv)
    with fuzz_stack() as app:
        cfg = config(
            max_examples=args.max_examples,
            stateful=not args.no_stateful,
            seed=args.seed,
            max_time=args.max_time or None,
        )
        report = run(app, cfg)
    print(f"cases: {report.total} {report.cases}")
    for line in report.errors:
        print("ERROR", line)
    for line in report.failures:
        print("FAILURE", line)
    print(f"{len(report.failures)} distinct failure(s), {len(report.errors)} error(s)")
    return 1 if report.failures or report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
