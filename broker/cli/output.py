"""What the CLI prints: rich tables for people, one JSON document with ``--json`` for scripts.

Exit codes (documented in ``hpcb --help`` and the README):

====  ==========================================================================
0     success
1     a request failed (FAILED, a job that did not complete, an API error)
2     usage: bad arguments, no endpoint, an input the API rejected as invalid
3     timeout: a ``--wait`` or ``wait`` ended before the thing was done
4     not found or forbidden (404/403; the API does not tell them apart)
====  ==========================================================================
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from broker.client.errors import (
    ApiError,
    ClientError,
    ConfigurationError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    WaitTimeoutError,
)

OK, FAILED, USAGE, TIMEOUT, NOT_FOUND = 0, 1, 2, 3, 4
EXIT_CODES_HELP = (
    "Exit codes: 0 success; 1 request failed; 2 usage or invalid input; 3 timeout; "
    "4 not found or forbidden."
)


def exit_code(exc: ClientError) -> int:
    """The exit code for an error the client raised."""
    if isinstance(exc, WaitTimeoutError):
        return TIMEOUT
    if isinstance(exc, NotFoundError | ForbiddenError):
        return NOT_FOUND
    if isinstance(exc, ConfigurationError | InvalidRequestError | PayloadTooLargeError):
        return USAGE
    return FAILED


def jsonable(value: Any) -> Any:
    """Models and dataclasses as JSON-ready values."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value


@dataclass
class Output:
    """The output mode of one invocation."""

    as_json: bool = False

    @property
    def console(self) -> Console:
        # Built at each use, so that it writes to whatever sys.stdout is now (CliRunner).
        return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160)

    def json(self, value: Any) -> None:
        """One JSON document on stdout."""
        sys.stdout.write(json.dumps(jsonable(value), indent=2, default=str) + "\n")

    def emit(self, value: Any, human: str | Table | None = None) -> None:
        """``value`` as JSON with --json, else ``human`` (or a key/value table of ``value``)."""
        if self.as_json:
            self.json(value)
        elif human is not None:
            self.console.print(human, highlight=False)
        else:
            self.console.print(kv_table(jsonable(value)))

    def error(self, exc: ClientError) -> None:
        """An error on stderr: its JSON body with --json, else one line (and bad fields)."""
        err = Console(file=sys.stderr, width=160)
        if self.as_json:
            body = exc.body if isinstance(exc, ApiError) else {"error": {"message": str(exc)}}
            sys.stderr.write(json.dumps(body) + "\n")
            return
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        if isinstance(exc, ApiError):
            for field in exc.fields:
                err.print(f"  {field.get('field')}: {field.get('message')}", highlight=False)


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> Table:
    """A plain table of ``rows`` (None shows as ``-``)."""
    out = Table(*columns, title=title, box=None, header_style="bold", pad_edge=False)
    for row in rows:
        out.add_row(*("-" if v is None else str(v) for v in row))
    return out


def kv_table(values: dict[str, Any]) -> Table:
    """Two columns: field and value (nested values as compact JSON)."""
    rows = []
    for key, value in values.items():
        shown = json.dumps(value) if isinstance(value, dict | list) else value
        rows.append((key, shown))
    return table(("field", "value"), rows)
