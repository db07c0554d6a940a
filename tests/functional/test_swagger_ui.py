"""The Swagger UI page (``GET /v1/docs``) in a real headless browser (issue 14): Debian's
Chromium loads the page from the API served over HTTP, runs Swagger UI's script (Powertools
inlines it: no CDN, so it renders offline), and the rendered page lists every operation of the
OpenAPI document. A screenshot is saved under ``.run/`` and its path printed.

Chromium comes from ``make test`` (``scripts/install-system-deps.sh --with-browser``); without
it the test is skipped, unless REQUIRE_SLURM=1 (CI), where that is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
import requests
from werkzeug.serving import make_server

from broker.api import services as api_services
from broker.api.handler import lambda_handler
from broker.jobs.accept import RequestService
from broker.local.apigw import ApiGatewayApp, ApiRoute
from tests.fakes import EveryoneAs, FakeDirectory, FakeQueue, InMemoryStore

ROOT = Path(__file__).resolve().parents[2]
METHODS = ("get", "put", "post", "delete", "patch")


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("REQUIRE_SLURM") == "1":
            pytest.fail("chromium is missing: make test installs it (install-system-deps.sh)")
        pytest.skip("chromium is not installed (make test installs it)")
    return found


@pytest.fixture
def api_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The API handler behind the local API Gateway adapter, on a real HTTP port."""
    service = RequestService(InMemoryStore(), FakeQueue(), FakeDirectory(), users=EveryoneAs())
    monkeypatch.setattr(api_services, "request_service", lambda: service)
    route = ApiRoute(
        resource="/{proxy+}", method="ANY", handler=lambda_handler, function_name="ApiFunction"
    )
    server = make_server("127.0.0.1", 0, ApiGatewayApp([route]), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


class Operations(HTMLParser):
    """(METHOD, path) of every operation block Swagger UI rendered: each block has a
    ``opblock-summary-method`` span (its text: the method), then an element with ``data-path``."""

    def __init__(self) -> None:
        super().__init__()
        self.found: set[tuple[str, str]] = set()
        self._in_method = False
        self._method = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if "opblock-summary-method" in (values.get("class") or "").split():
            self._in_method, self._method = True, ""
        path = values.get("data-path")
        if path and self._method:
            self.found.add((self._method, path))

    def handle_data(self, data: str) -> None:
        if self._in_method:
            self._method, self._in_method = data.strip().upper(), False


def browse(browser: str, url: str, *flags: str) -> subprocess.CompletedProcess[str]:
    """Chromium, headless, given time for the page's script to run."""
    return subprocess.run(
        [
            browser,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=20000",
            "--window-size=1400,3600",
            *flags,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_swagger_ui_renders_every_operation_in_a_real_browser(api_url: str, tmp_path: Path) -> None:
    browser = chromium()
    # GIVEN the API's OpenAPI document, served with the page over HTTP
    document = requests.get(f"{api_url}/v1/openapi.json", timeout=30).json()
    expected = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }
    # WHEN Chromium opens /v1/docs and runs its script
    dom = browse(browser, f"{api_url}/v1/docs", f"--user-data-dir={tmp_path / 'profile'}",
                 "--dump-dom")  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    # THEN the rendered page lists every operation of the document, and its title
    parser = Operations()
    parser.feed(dom.stdout)
    assert "swagger-ui" in dom.stdout
    assert re.search(r"hpc-broker API", dom.stdout)
    assert len(expected) >= 10
    assert parser.found == expected
    # AND a screenshot of it is kept under .run/
    shot = ROOT / ".run" / "swagger-ui.png"
    shot.parent.mkdir(exist_ok=True)
    taken = browse(browser, f"{api_url}/v1/docs", f"--user-data-dir={tmp_path / 'profile2'}",
                   f"--screenshot={shot}")  # fmt: skip
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert shot.stat().st_size > 10_000
    print(f"Swagger UI screenshot: {shot}")
