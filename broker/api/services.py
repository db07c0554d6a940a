"""The services the routes use, looked up at each call through this module (so that a test
puts its own in place with one ``monkeypatch.setattr(services, ...)`` for every route)."""

from __future__ import annotations

from broker.wiring import cluster_service, request_service, user_admin

__all__ = ["cluster_service", "request_service", "user_admin"]
