"""Serve Lambda API handlers over HTTP the way API Gateway REST (v1) proxy integration does.

:class:`ApiGatewayApp` is a WSGI app. For each request it finds the route (the ``Api`` events of
``template.yaml``, e.g. ``ANY /{proxy+}``), builds a genuine REST proxy event (``resource``,
``path``, ``headers`` + ``multiValueHeaders``, query strings, ``pathParameters``, ``body`` +
``isBase64Encoded``, ``requestContext`` with ``identity``), invokes the handler with a
:class:`~broker.local.context.LambdaContext`, and maps the proxy result (``statusCode``,
``headers``, ``multiValueHeaders``, ``body``, ``isBase64Encoded``) back to the HTTP response.
API Gateway's own answers are reproduced where the handler never runs: no route (or, with
``require_authorization``, no ``Authorization`` header) -> 403 ``Missing Authentication Token``;
body over 10 MB -> 413; handler error or malformed result -> 502 ``Internal server error``. Their
bodies have the API's error schema, ``{"error": {"code", "message", "transient", "fields"}}``,
as the ``GatewayResponses`` of ``template.yaml`` make API Gateway answer; the code is API
Gateway's response type (``MISSING_AUTHENTICATION_TOKEN``, ``ACCESS_DENIED``, …), except 413,
whose code is the API's own ``PAYLOAD_TOO_LARGE``.

The app is served at the root: the client calls ``/v1/requests/abc`` and that is the event's
``path``; ``requestContext.path`` carries the stage prefix (``/api/v1/requests/abc``), as in AWS.

Local identity (the stand-in for SigV4)
---------------------------------------
In AWS the API uses ``AWS_IAM`` auth: API Gateway verifies the SigV4 signature and writes the
caller's IAM identity into ``requestContext.identity`` (``userArn``, ``caller``, ``user``,
``accountId``, ``accessKey``). Locally nothing verifies signatures. The caller's ARN is taken
from the request header ``X-Hpcb-Local-Principal`` when present, else from the app's default
principal (``arn:aws:iam::000000000000:user/local-developer`` unless configured), and the other
identity fields are derived from it consistently (user/role ids are stable fakes). The header is
removed from the event's headers, so the handler only ever sees ``requestContext`` — exactly what
it sees in AWS. The header is never honoured in AWS: API Gateway passes unknown headers through,
but the handler does not read headers for identity, only ``requestContext.identity``.
Anyone who can reach this server can act as any principal; that is why it binds to 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

from werkzeug.datastructures import Headers
from werkzeug.serving import WSGIRequestHandler
from werkzeug.wrappers import Request, Response

from broker.local.browsers import LOOPBACK_HOSTS, browser_refusal
from broker.local.context import LambdaContext

__all__ = [
    "DEFAULT_PRINCIPAL",
    "MAX_BODY_BYTES",
    "PRINCIPAL_HEADER",
    "ApiGatewayApp",
    "ApiRoute",
    "RawHeadersRequestHandler",
    "identity_for",
]

logger = logging.getLogger(__name__)

DEFAULT_PRINCIPAL: Final = "arn:aws:iam::000000000000:user/local-developer"
PRINCIPAL_HEADER: Final = "X-Hpcb-Local-Principal"
# API Gateway's payload limit for REST APIs.
MAX_BODY_BYTES: Final = 10 * 1024 * 1024
_METHODS: Final = frozenset({"DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"})
_RAW_HEADERS_KEY: Final = "hpcb.raw_headers"
# Connection-level headers end at API Gateway's edge; the integration never sees them.
_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_PRINCIPAL_RE: Final = re.compile(
    r"^arn:(?P<partition>aws[a-z-]*):(?P<service>iam|sts)::(?P<account>\d{12}):(?P<resource>.+)$"
)

Handler = Callable[[dict[str, Any], Any], Any]


class InvalidPrincipalError(ValueError):
    """The local principal is not an IAM/STS ARN this emulation understands."""


@dataclass(frozen=True)
class ApiRoute:
    """One ``Api`` event of a function: resource path + method -> handler."""

    resource: str
    method: str
    handler: Handler
    function_name: str
    timeout_s: float = 30.0
    memory_mb: int = 512

    def match(self, method: str, path: str) -> dict[str, str] | None:
        """The path parameters when ``method path`` is routed here, else ``None``."""
        if self.method not in ("ANY", method):
            return None
        found = _compile(self.resource).fullmatch(path)
        if found is None:
            return None
        return {_unmangle(k): v for k, v in found.groupdict().items()}

    @property
    def specificity(self) -> tuple[int, int, int]:
        """Sort key: literal segments first, then single-segment parameters, greedy last."""
        segments = [s for s in self.resource.split("/") if s]
        greedy = sum(1 for s in segments if s.endswith("+}"))
        literal = sum(1 for s in segments if not s.startswith("{"))
        return (-literal, greedy, -len(segments))


def _mangle(name: str) -> str:
    return "p_" + name.encode().hex()


def _unmangle(group: str) -> str:
    return bytes.fromhex(group[2:]).decode()


def _compile(resource: str) -> re.Pattern[str]:
    parts: list[str] = []
    for segment in resource.strip("/").split("/"):
        if not segment:
            continue
        if segment.startswith("{") and segment.endswith("+}"):
            parts.append(f"/(?P<{_mangle(segment[1:-2])}>.+)")
        elif segment.startswith("{") and segment.endswith("}"):
            parts.append(f"/(?P<{_mangle(segment[1:-1])}>[^/]+)")
        else:
            parts.append("/" + re.escape(segment))
    return re.compile("".join(parts) or "/")


def identity_for(principal_arn: str, *, source_ip: str, user_agent: str | None) -> dict[str, Any]:
    """``requestContext.identity`` as API Gateway fills it for a SigV4 caller with this ARN.

    ``caller``/``user`` follow AWS's shapes: an IAM user's unique id (``AIDA…``), a role
    session's ``AROA…:<session>``, or the account id for ``root``. The ids are stable fakes
    derived from the ARN.

    Raises:
        InvalidPrincipalError: not an ``arn:aws:iam::<12 digits>:…`` or ``arn:aws:sts::…`` ARN.
    """
    found = _PRINCIPAL_RE.fullmatch(principal_arn.strip())
    if found is None:
        raise InvalidPrincipalError(f"not an IAM or STS principal ARN: {principal_arn!r}")
    account, resource, service = found["account"], found["resource"], found["service"]
    digest = hashlib.sha256(principal_arn.encode()).hexdigest().upper()[:17]
    if resource == "root":
        user = account
        access_key = "AKIA" + digest[:16]
    elif service == "iam" and resource.startswith("user/"):
        user = "AIDA" + digest
        access_key = "AKIA" + digest[:16]
    elif service == "sts" and resource.startswith("assumed-role/") and resource.count("/") >= 2:
        user = f"AROA{digest}:{resource.rsplit('/', 1)[1]}"
        access_key = "ASIA" + digest[:16]
    else:
        raise InvalidPrincipalError(
            f"unsupported principal {principal_arn!r}: use an IAM user, an STS assumed-role "
            "session, or root"
        )
    return {
        "cognitoIdentityPoolId": None,
        "accountId": account,
        "cognitoIdentityId": None,
        "caller": user,
        "sourceIp": source_ip,
        "principalOrgId": None,
        "accessKey": access_key,
        "cognitoAuthenticationType": None,
        "cognitoAuthenticationProvider": None,
        "userArn": principal_arn,
        "userAgent": user_agent,
        "user": user,
        "apiKey": None,
        "apiKeyId": None,
        "clientCert": None,
    }


class RawHeadersRequestHandler(WSGIRequestHandler):
    """Werkzeug's request handler, also keeping the headers as sent (case, repeats).

    WSGI folds repeated headers into one comma-joined ``HTTP_*`` value and loses the case; API
    Gateway keeps both, so the raw list rides along in the environ for :class:`ApiGatewayApp`.
    """

    def make_environ(self) -> dict[str, Any]:
        """The WSGI environ plus the raw header list."""
        environ: dict[str, Any] = super().make_environ()
        environ[_RAW_HEADERS_KEY] = list(self.headers.items())
        return environ


class QuietRequestHandler(RawHeadersRequestHandler):
    """The same, without one access-log line per request."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Do not log successful requests."""


def _gateway_error(status: int, message: str, request_id: str, code: str) -> Response:
    # API Gateway's own error bodies, shaped by template.yaml's GatewayResponses.
    error = {"code": code, "message": message, "transient": status >= 500, "fields": []}
    return Response(
        json.dumps({"error": error}),
        status=status,
        headers={"x-amzn-RequestId": request_id, "x-amzn-ErrorType": _ERROR_TYPES.get(status, "")},
        content_type="application/json",
    )


_ERROR_TYPES: Final = {
    403: "MissingAuthenticationTokenException",
    413: "RequestTooLongException",
    421: "MisdirectedRequestException",
    502: "InternalServerErrorException",
}


class ApiGatewayApp:
    """A WSGI app serving Lambda proxy handlers as an API Gateway REST API stage would.

    Args:
        routes: the ``Api`` events and their handlers.
        stage: the stage name (``requestContext.stage``; prefix of ``requestContext.path``).
        api_id: the REST API id (``requestContext.apiId``).
        account_id: the account owning the API (``requestContext.accountId``).
        region: for the Lambda context's ARN.
        default_principal: the caller's IAM ARN when ``X-Hpcb-Local-Principal`` is absent.
        max_body_bytes: request bodies above this get 413.
        binary_media_types: content types passed base64-encoded (API ``BinaryMediaTypes``);
            bodies that are not UTF-8 are always base64-encoded.
        require_authorization: answer 403 ``MISSING_AUTHENTICATION_TOKEN`` to a request
            without an ``Authorization`` header, as ``AWS_IAM`` auth does (the signature is not
            checked; off by default so that local clients need not sign).
    """

    def __init__(
        self,
        routes: Sequence[ApiRoute],
        *,
        stage: str = "api",
        api_id: str = "localapi01",
        account_id: str = "123456789012",
        region: str = "us-east-1",
        default_principal: str = DEFAULT_PRINCIPAL,
        max_body_bytes: int = MAX_BODY_BYTES,
        binary_media_types: Iterable[str] = (),
        require_authorization: bool = False,
        allowed_hosts: frozenset[str] | None = LOOPBACK_HOSTS,
    ) -> None:
        if not routes:
            raise ValueError("an API needs at least one route")
        identity_for(default_principal, source_ip="127.0.0.1", user_agent=None)  # validate
        self.routes = sorted(routes, key=lambda r: r.specificity)
        self.stage = stage
        self.api_id = api_id
        self.account_id = account_id
        self.region = region
        self.default_principal = default_principal
        self.max_body_bytes = max_body_bytes
        self.binary_media_types = tuple(t.lower() for t in binary_media_types)
        self.require_authorization = require_authorization
        self.allowed_hosts = allowed_hosts

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """WSGI entry point (a web page's calls are refused first: ``broker.local.browsers``)."""
        request, refused = Request(environ), browser_refusal(environ, self.allowed_hosts)
        response = self.handle(request) if refused is None else _gateway_error(*refused)
        result: Iterable[bytes] = response(environ, start_response)
        return result

    def handle(self, request: Request) -> Response:
        """Route one HTTP request through a handler, as API Gateway would."""
        request_id = str(uuid.uuid4())
        method = request.method.upper()
        path = request.path
        routed = self._route(method, path)
        if routed is None:
            return _gateway_error(
                403, "Missing Authentication Token", request_id, "MISSING_AUTHENTICATION_TOKEN"
            )
        route, path_parameters = routed
        if self.require_authorization and "Authorization" not in request.headers:
            return _gateway_error(
                403, "Missing Authentication Token", request_id, "MISSING_AUTHENTICATION_TOKEN"
            )

        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            return _gateway_error(413, "Request Too Long", request_id, "PAYLOAD_TOO_LARGE")
        body = request.stream.read(self.max_body_bytes + 1)
        if len(body) > self.max_body_bytes:
            return _gateway_error(413, "Request Too Long", request_id, "PAYLOAD_TOO_LARGE")

        raw_headers = self._raw_headers(request)
        principal = self.default_principal
        for name, value in raw_headers:
            if name.lower() == PRINCIPAL_HEADER.lower():
                principal = value.strip()
        user_agent = request.headers.get("User-Agent")
        source_ip = request.remote_addr or "127.0.0.1"
        try:
            identity = identity_for(principal, source_ip=source_ip, user_agent=user_agent)
        except InvalidPrincipalError as exc:
            return _gateway_error(403, str(exc), request_id, "ACCESS_DENIED")

        event = self.build_event(
            request=request,
            raw_headers=raw_headers,
            body=body,
            route=route,
            path_parameters=path_parameters,
            identity=identity,
            request_id=request_id,
        )
        return self._invoke(route, event, request_id)

    def _route(self, method: str, path: str) -> tuple[ApiRoute, dict[str, str]] | None:
        if method not in _METHODS:
            return None
        for route in self.routes:
            params = route.match(method, path)
            if params is not None:
                return route, params
        return None

    @staticmethod
    def _raw_headers(request: Request) -> list[tuple[str, str]]:
        raw = request.environ.get(_RAW_HEADERS_KEY)
        if raw is not None:
            return [(str(k), str(v)) for k, v in raw]
        # In-process (werkzeug test client, schemathesis): rebuild from the environ.
        return [(k, v) for k, v in request.headers.items()]

    def build_event(
        self,
        *,
        request: Request,
        raw_headers: Sequence[tuple[str, str]],
        body: bytes,
        route: ApiRoute,
        path_parameters: Mapping[str, str],
        identity: dict[str, Any],
        request_id: str,
    ) -> dict[str, Any]:
        """The REST proxy event for one request (see the AWS "input format" documentation)."""
        now = time.time()
        headers_list = [
            (k, v)
            for k, v in raw_headers
            if k.lower() != PRINCIPAL_HEADER.lower() and k.lower() not in _HOP_BY_HOP
        ]
        headers_list = self._gateway_headers(headers_list, request)
        multi_headers: dict[str, list[str]] = {}
        for name, value in headers_list:
            multi_headers.setdefault(name, []).append(value)
        # API Gateway keeps the last value of a repeated header in "headers".
        headers = {name: values[-1] for name, values in multi_headers.items()}

        query = parse_qsl(
            request.environ.get("QUERY_STRING", ""), keep_blank_values=True, encoding="utf-8"
        )
        multi_query: dict[str, list[str]] = {}
        for name, value in query:
            multi_query.setdefault(name, []).append(value)

        content_type = (request.mimetype or "").lower()
        if not body:
            event_body: str | None = None
            is_base64 = False
        elif content_type in self.binary_media_types:
            event_body, is_base64 = base64.b64encode(body).decode(), True
        else:
            try:
                event_body, is_base64 = body.decode("utf-8"), False
            except UnicodeDecodeError:
                event_body, is_base64 = base64.b64encode(body).decode(), True

        host = request.host
        resource_id = hashlib.sha256(route.resource.encode()).hexdigest()[:6]
        return {
            "resource": route.resource,
            "path": request.path,
            "httpMethod": request.method.upper(),
            "headers": headers,
            "multiValueHeaders": multi_headers,
            "queryStringParameters": {k: v[-1] for k, v in multi_query.items()} or None,
            "multiValueQueryStringParameters": multi_query or None,
            "pathParameters": dict(path_parameters) or None,
            "stageVariables": None,
            "requestContext": {
                "resourceId": resource_id,
                "resourcePath": route.resource,
                "httpMethod": request.method.upper(),
                "extendedRequestId": base64.b64encode(uuid.uuid4().bytes).decode()[:16],
                "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
                "path": f"/{self.stage}{request.path}",
                "accountId": self.account_id,
                "protocol": request.environ.get("SERVER_PROTOCOL", "HTTP/1.1"),
                "stage": self.stage,
                "domainPrefix": host.split(".", 1)[0].split(":", 1)[0],
                "requestTimeEpoch": int(now * 1000),
                "requestId": request_id,
                "identity": identity,
                "domainName": host,
                "apiId": self.api_id,
            },
            "body": event_body,
            "isBase64Encoded": is_base64,
        }

    @staticmethod
    def _gateway_headers(headers: list[tuple[str, str]], request: Request) -> list[tuple[str, str]]:
        # API Gateway (through CloudFront) sets these on every request it forwards.
        lower = {k.lower(): v for k, v in headers}
        client_ip = request.remote_addr or "127.0.0.1"
        forwarded = lower.get("x-forwarded-for")
        added = {
            "X-Forwarded-For": f"{forwarded}, {client_ip}" if forwarded else client_ip,
            "X-Forwarded-Port": str(request.environ.get("SERVER_PORT", "80")),
            "X-Forwarded-Proto": request.scheme,
        }
        if "x-amzn-trace-id" not in lower:
            added["X-Amzn-Trace-Id"] = f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}"
        kept = [(k, v) for k, v in headers if k.lower() not in {a.lower() for a in added}]
        return kept + list(added.items())

    def _invoke(self, route: ApiRoute, event: dict[str, Any], request_id: str) -> Response:
        context = LambdaContext.for_invocation(
            function_name=route.function_name,
            timeout_s=route.timeout_s,
            memory_mb=route.memory_mb,
            region=self.region,
            account_id=self.account_id,
        )
        try:
            result = route.handler(event, context)
        except Exception:
            logger.exception(
                "%s raised on %s %s", route.function_name, event["httpMethod"], event["path"]
            )
            return _gateway_error(502, "Internal server error", request_id, "INTEGRATION_FAILURE")
        if context.overran:
            logger.warning(
                "%s took longer than its %ss timeout (AWS would have stopped it)",
                route.function_name,
                route.timeout_s,
            )
        try:
            return self._to_response(result, request_id)
        except (TypeError, ValueError, KeyError) as exc:
            logger.error("%s returned a malformed proxy result: %s", route.function_name, exc)
            return _gateway_error(502, "Internal server error", request_id, "INTEGRATION_FAILURE")

    @staticmethod
    def _to_response(result: Any, request_id: str) -> Response:
        if not isinstance(result, dict) or "statusCode" not in result:
            raise ValueError(f"not a proxy result: {type(result).__name__}")
        status = int(result["statusCode"])
        body = result.get("body")
        if body is None:
            payload = b""
        elif not isinstance(body, str):
            raise TypeError(f"body must be a string, got {type(body).__name__}")
        elif result.get("isBase64Encoded"):
            payload = base64.b64decode(body)
        else:
            payload = body.encode("utf-8")
        # Both maps are merged; for a name in both, multiValueHeaders wins (AWS documents this).
        merged: dict[str, list[str]] = {}
        for name, value in (result.get("headers") or {}).items():
            merged[name.lower()] = [f"{name}", str(value)]
        multi: dict[str, list[str]] = {}
        for name, values in (result.get("multiValueHeaders") or {}).items():
            multi[name.lower()] = [name, *(str(v) for v in values)]
        merged.update(multi)
        headers = Headers()
        for entry in merged.values():
            name, *values = entry
            for value in values:
                headers.add(name, value)
        headers.setdefault("Content-Type", "application/json")
        headers["x-amzn-RequestId"] = request_id
        return Response(payload, status=status, headers=headers)
