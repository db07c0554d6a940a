"""broker.local.apigw over real HTTP: the event a handler receives is a genuine API Gateway REST
proxy event, and its result is mapped back the way API Gateway maps it."""

from __future__ import annotations

import http.client
import importlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from aws_lambda_powertools.utilities.parser.models import APIGatewayProxyEventModel
from werkzeug.serving import make_server
from werkzeug.test import Client

from broker.local.apigw import (
    DEFAULT_PRINCIPAL,
    MAX_BODY_BYTES,
    PRINCIPAL_HEADER,
    ApiGatewayApp,
    ApiRoute,
    RawHeadersRequestHandler,
)
from broker.local.stack import LocalStack
from broker.schema import ErrorResponse

HERE = Path(__file__).resolve().parent
# Saved output of `sam local generate-event apigateway aws-proxy` (SAM CLI 1.170.0).
FIXTURE = HERE.parent / "events" / "apigw_rest_proxy.json"
TEST_TEMPLATE = HERE / "local_stack_template.yaml"
OK = {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": "{}"}


@dataclass
class Recorder:
    """A Lambda handler that records its events and answers with ``result`` (or raises)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    contexts: list[Any] = field(default_factory=list)
    result: Callable[[dict[str, Any]], Any] = lambda _event: OK

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        self.events.append(event)
        self.contexts.append(context)
        return self.result(event)

    @property
    def last(self) -> dict[str, Any]:
        return self.events[-1]


@dataclass
class Served:
    url: str
    handler: Recorder


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """ApiGatewayApp on a threaded werkzeug server on 127.0.0.1 (no AWS needed)."""
    recorder = Recorder()
    app = ApiGatewayApp(
        [ApiRoute("/{proxy+}", "ANY", recorder, "hpcb-local-ApiFunction", 30, 512)],
        stage="api",
        api_id="abcdef1234",
        account_id="123456789012",
    )
    server = make_server(
        "127.0.0.1", 0, app, threaded=True, request_handler=RawHeadersRequestHandler
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Served(f"http://127.0.0.1:{server.server_port}", recorder)
    server.shutdown()
    thread.join(5)


@pytest.fixture
def api(served: Served) -> Served:
    served.handler.events.clear()
    served.handler.result = lambda _event: OK
    return served


def _raw_request(
    url: str, method: str, path: str, headers: list[tuple[str, str]]
) -> http.client.HTTPResponse:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    conn.putrequest(method, path)
    for name, value in headers:
        conn.putheader(name, value)
    conn.endheaders()
    return conn.getresponse()


# -- the event ------------------------------------------------------------------------------------


def test_event_has_every_key_of_the_sam_rest_proxy_fixture(api: Served) -> None:
    # GIVEN the event SAM generates for an API Gateway REST proxy integration
    fixture = json.loads(FIXTURE.read_text())

    # WHEN a request goes through the local API
    requests.post(f"{api.url}/v1/jobs?x=1", json={"a": 1}, timeout=10)
    event = api.handler.last

    # THEN the event has every key of the fixture, at each level, and Powertools' own model
    # of a REST proxy event accepts it
    assert set(fixture) <= set(event)
    assert set(fixture["requestContext"]) <= set(event["requestContext"])
    assert set(fixture["requestContext"]["identity"]) <= set(event["requestContext"]["identity"])
    APIGatewayProxyEventModel.model_validate(event)


def test_event_carries_the_full_path_and_the_stage_prefixed_context_path(api: Served) -> None:
    # GIVEN / WHEN a request for /v1/requests/abc
    requests.get(f"{api.url}/v1/requests/abc", timeout=10)
    event = api.handler.last

    # THEN path is what the client asked for, the greedy proxy parameter has no leading slash
    # (as in AWS), and requestContext.path carries the stage
    assert event["path"] == "/v1/requests/abc"
    assert event["resource"] == "/{proxy+}"
    assert event["pathParameters"] == {"proxy": "v1/requests/abc"}
    assert event["requestContext"]["path"] == "/api/v1/requests/abc"
    assert event["requestContext"]["stage"] == "api"
    assert event["requestContext"]["resourcePath"] == "/{proxy+}"
    assert event["requestContext"]["apiId"] == "abcdef1234"
    assert event["stageVariables"] is None


def test_identity_comes_from_the_local_principal_header_which_is_not_forwarded(
    api: Served,
) -> None:
    # GIVEN a caller naming its principal in the local header
    arn = "arn:aws:sts::111122223333:assumed-role/Researcher/alice"

    # WHEN it calls the API
    requests.get(f"{api.url}/v1/requests", headers={PRINCIPAL_HEADER: arn}, timeout=10)
    event = api.handler.last

    # THEN requestContext.identity names it consistently, and the header itself is gone
    identity = event["requestContext"]["identity"]
    assert identity["userArn"] == arn
    assert identity["accountId"] == "111122223333"
    assert identity["caller"] == identity["user"]
    assert identity["caller"].startswith("AROA")
    assert identity["caller"].endswith(":alice")
    assert identity["accessKey"].startswith("ASIA")
    assert not {k.lower() for k in event["headers"]} & {PRINCIPAL_HEADER.lower()}
    assert not {k.lower() for k in event["multiValueHeaders"]} & {PRINCIPAL_HEADER.lower()}


def test_identity_defaults_to_the_configured_principal(api: Served) -> None:
    # GIVEN / WHEN a request without the local principal header
    requests.get(f"{api.url}/v1/requests", timeout=10)
    identity = api.handler.last["requestContext"]["identity"]

    # THEN the default principal is the caller
    assert identity["userArn"] == DEFAULT_PRINCIPAL
    assert identity["accountId"] == "000000000000"
    assert identity["user"].startswith("AIDA")
    assert identity["sourceIp"] == "127.0.0.1"


def test_a_principal_header_that_is_not_an_iam_arn_is_refused(api: Served) -> None:
    # GIVEN / WHEN a request with a principal that is not an IAM/STS ARN
    response = requests.get(
        f"{api.url}/v1/requests", headers={PRINCIPAL_HEADER: "alice"}, timeout=10
    )

    # THEN it is refused before any handler runs
    assert response.status_code == 403
    assert api.handler.events == []


def test_repeated_request_headers_arrive_in_multi_value_headers(api: Served) -> None:
    # GIVEN / WHEN a request repeating a header
    _raw_request(api.url, "GET", "/v1/h", [("X-Tag", "a"), ("X-Tag", "b")]).read()
    event = api.handler.last

    # THEN multiValueHeaders has both values in order (original case) and headers the last
    assert event["multiValueHeaders"]["X-Tag"] == ["a", "b"]
    assert event["headers"]["X-Tag"] == "b"


def test_response_multi_value_headers_become_repeated_http_headers(api: Served) -> None:
    # GIVEN a handler answering with headers and multiValueHeaders
    api.handler.result = lambda _event: {
        "statusCode": 201,
        "headers": {"Content-Type": "application/json", "X-One": "1", "X-Both": "single"},
        "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"], "X-Both": ["m1", "m2"]},
        "body": '{"ok": true}',
        "isBase64Encoded": False,
    }

    # WHEN the API is called
    response = _raw_request(api.url, "GET", "/v1/h", [])
    body = response.read()

    # THEN status and body pass through, each multi value is its own header line, and for a
    # name in both maps multiValueHeaders wins (API Gateway's documented merge)
    assert response.status == 201
    assert json.loads(body) == {"ok": True}
    assert response.msg.get_all("Set-Cookie") == ["a=1", "b=2"]
    assert response.msg.get_all("X-Both") == ["m1", "m2"]
    assert response.msg.get_all("X-One") == ["1"]


def test_query_strings_fill_both_single_and_multi_value_maps(api: Served) -> None:
    # GIVEN / WHEN a query string repeating a key, with an encoded value
    requests.get(f"{api.url}/v1/jobs?state=R&state=PD&q=a%20b", timeout=10)
    event = api.handler.last

    # THEN the single map has the last value, the multi map all, both decoded
    assert event["queryStringParameters"] == {"state": "PD", "q": "a b"}
    assert event["multiValueQueryStringParameters"] == {"state": ["R", "PD"], "q": ["a b"]}


def test_no_query_string_and_no_body_are_null(api: Served) -> None:
    # GIVEN / WHEN a GET without query string or body
    requests.get(f"{api.url}/v1/jobs", timeout=10)
    event = api.handler.last

    # THEN API Gateway's nulls, not empty maps
    assert event["queryStringParameters"] is None
    assert event["multiValueQueryStringParameters"] is None
    assert event["body"] is None
    assert event["isBase64Encoded"] is False


def test_text_body_is_passed_as_is_and_binary_body_base64_encoded(api: Served) -> None:
    # GIVEN / WHEN a UTF-8 JSON body, then a body that is not UTF-8
    requests.post(f"{api.url}/v1/jobs", data='{"name": "é"}'.encode(), timeout=10)
    text_event = api.handler.last
    requests.post(f"{api.url}/v1/blob", data=b"\x00\xff\xfe", timeout=10)
    binary_event = api.handler.last

    # THEN text stays text; binary is base64 with isBase64Encoded
    assert (text_event["body"], text_event["isBase64Encoded"]) == ('{"name": "é"}', False)
    assert (binary_event["body"], binary_event["isBase64Encoded"]) == ("AP/+", True)


def test_base64_encoded_result_body_is_decoded_for_the_client(api: Served) -> None:
    # GIVEN a handler answering a base64-encoded binary body
    api.handler.result = lambda _event: {
        "statusCode": 200,
        "headers": {"Content-Type": "application/octet-stream"},
        "body": "AAEC/w==",
        "isBase64Encoded": True,
    }

    # WHEN / THEN the client gets the bytes
    assert requests.get(f"{api.url}/v1/blob", timeout=10).content == b"\x00\x01\x02\xff"


def test_body_over_api_gateway_limit_is_413_without_invoking(api: Served) -> None:
    # GIVEN a body one byte over API Gateway's 10 MB limit
    body = b"x" * (MAX_BODY_BYTES + 1)

    # WHEN it is posted
    response = requests.post(f"{api.url}/v1/jobs", data=body, timeout=30)

    # THEN 413, and the handler never ran
    assert response.status_code == 413
    assert api.handler.events == []


def test_path_outside_every_route_is_api_gateways_403(api: Served) -> None:
    # GIVEN only /{proxy+} is routed (it needs at least one segment)
    # WHEN the root is requested
    response = requests.get(f"{api.url}/", timeout=10)

    # THEN API Gateway's answer for an unknown resource, in the API's error schema (as the
    # template's GatewayResponses shape it), without invoking
    assert response.status_code == 403
    assert response.json() == {
        "error": {
            "code": "MISSING_AUTHENTICATION_TOKEN",
            "message": "Missing Authentication Token",
            "transient": False,
            "fields": [],
        }
    }
    ErrorResponse.model_validate(response.json())
    assert api.handler.events == []


def test_handler_exception_is_a_502_internal_server_error(api: Served) -> None:
    # GIVEN a handler that raises
    def boom(_event: dict[str, Any]) -> Any:
        raise RuntimeError("expected by the test")

    api.handler.result = boom

    # WHEN / THEN API Gateway's 502
    response = requests.get(f"{api.url}/v1/jobs", timeout=10)
    assert response.status_code == 502
    assert response.json()["error"]["message"] == "Internal server error"
    assert response.json()["error"]["transient"] is True
    ErrorResponse.model_validate(response.json())


def test_malformed_proxy_result_is_a_502(api: Served) -> None:
    # GIVEN a handler returning no statusCode
    api.handler.result = lambda _event: {"body": "forgot the status"}

    # WHEN / THEN 502, as API Gateway answers a malformed Lambda proxy response
    assert requests.get(f"{api.url}/v1/jobs", timeout=10).status_code == 502


def test_handler_gets_a_lambda_context_with_name_and_time_budget(api: Served) -> None:
    # GIVEN / WHEN a request
    requests.get(f"{api.url}/v1/jobs", timeout=10)
    context = api.handler.contexts[-1]

    # THEN the context names the function and counts down from its timeout
    assert context.function_name == "hpcb-local-ApiFunction"
    assert context.memory_limit_in_mb == 512
    assert 0 < context.get_remaining_time_in_millis() <= 30_000
    assert context.invoked_function_arn.endswith(":function:hpcb-local-ApiFunction")


# -- through LocalStack --------------------------------------------------------------------------


def test_local_stack_serves_the_template_api_function_after_setting_its_environment() -> None:
    # GIVEN the test template's stack (ApiFunction on ANY /{proxy+}, stage "test")
    with LocalStack(TEST_TEMPLATE, access_log=False) as stack:
        # WHEN the API is called
        response = requests.get(f"{stack.api_url}/v1/hello?x=1", timeout=10)
        handlers = importlib.import_module("tests.functional.local_handlers")
        event = handlers.API_EVENTS[-1]
        queue_url = stack.queue_url("WorkQueue")

    # THEN the handler answered through the emulated API Gateway, with the template's stage,
    # and at import it saw its resolved environment (set before the import)
    assert response.status_code == 201
    assert response.headers["X-Single"] == "one"
    assert event["requestContext"]["path"] == "/test/v1/hello"
    assert response.json()["cold_start_env"] == {
        "HPCB_TEST_TABLE": "hpcb-local-Table",
        "HPCB_TEST_STAGE": "test",
        "HPCB_TEST_QUEUE_URL": queue_url,
    }


def test_require_authorization_answers_an_unsigned_call_as_aws_iam_does() -> None:
    # GIVEN the adapter in AWS_IAM mode (as the fuzz runs it)
    recorder = Recorder()
    app = ApiGatewayApp([ApiRoute("/{proxy+}", "ANY", recorder, "f")], require_authorization=True)
    client = Client(app)
    # WHEN a call comes without Authorization / THEN API Gateway's 403 in the error schema,
    # and the handler never runs
    unsigned = client.get("/v1/clusters")
    assert unsigned.status_code == 403
    assert unsigned.get_json()["error"]["code"] == "MISSING_AUTHENTICATION_TOKEN"
    assert recorder.events == []
    # AND a call with one reaches the handler
    assert (
        client.get("/v1/clusters", headers={"Authorization": "AWS4-HMAC-SHA256 x"}).status_code
        == 200
    )


# -- web pages cannot drive the local API (issue 12, "Local mode") --------------------------------


@pytest.mark.parametrize(
    "origin",
    ["http://evil.example", "https://evil.example:8080", "null", "http://127.0.0.1.evil.example"],
)
def test_a_cross_origin_call_from_a_web_page_is_refused_unhandled(api: Served, origin: str) -> None:
    # GIVEN what a browser sends for a no-cors POST from a page of another site (no preflight:
    # its body has no type), with the page's Origin
    body = b'{"script": "#!/bin/sh\\n"}'
    url = f"{api.url}/v1/clusters/local/jobs"
    response = requests.post(url, data=body, headers={"Origin": origin}, timeout=10)
    # THEN 403 CROSS_ORIGIN_REFUSED in the error schema, and the handler never ran
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "CROSS_ORIGIN_REFUSED"
    assert api.handler.events == []


def test_a_rebound_host_name_is_refused_unhandled(api: Served) -> None:
    # GIVEN a page whose own name now resolves to 127.0.0.1 (DNS rebinding): its name is the Host
    response = requests.get(f"{api.url}/v1/requests/r1", headers={"Host": "evil.example:8080"},
                            timeout=10)  # fmt: skip
    # THEN 421 MISDIRECTED_REQUEST, and the handler never ran
    assert response.status_code == 421
    assert response.json()["error"]["code"] == "MISDIRECTED_REQUEST"
    assert api.handler.events == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Host": "localhost"},
        {"Origin": "http://127.0.0.1:8080"},
        {"Origin": "http://localhost"},
    ],
)
def test_local_clients_and_same_origin_pages_are_served(
    api: Served, headers: dict[str, str]
) -> None:
    # GIVEN curl, the CLI or the client (no Origin), or the local Swagger UI page (its own origin)
    response = requests.get(f"{api.url}/v1/requests/r1", headers=headers, timeout=10)
    # THEN the call reaches the handler
    assert response.status_code == 200
    assert len(api.handler.events) == 1
