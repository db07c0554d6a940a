"""What every ``hpcb`` command shares: the invocation's context and waiting for a request.

Its own module so that the command modules (``clusters``, ``jobs``, ``local``) and ``main``, which
registers them, import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import click

from broker.cli.output import Output
from broker.client import BrokerClient, resolve
from broker.requests.models import RequestView


@dataclass
class Context:
    """One invocation's settings and output mode; the client is built on first use."""

    options: dict[str, str | None]
    out: Output
    _client: BrokerClient | None = field(default=None, repr=False)

    @property
    def client(self) -> BrokerClient:
        if self._client is None:
            o = self.options
            settings = resolve(
                endpoint=o.get("endpoint"),
                stack=o.get("stack"),
                region=o.get("region"),
                profile=o.get("profile"),
                principal=o.get("principal"),
            )
            self._client = BrokerClient.from_settings(settings)
        return self._client


pass_ctx = click.make_pass_decorator(Context)


def wait_request(obj: Context, request_id: str, timeout: float) -> RequestView:
    """Wait for a request, printing a line while waiting (humans only)."""
    if not obj.out.as_json:
        obj.out.console.print(f"waiting for {request_id} …", highlight=False)
    return obj.client.wait(request_id, timeout=timeout)
