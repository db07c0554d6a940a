"""Job specs from sbatch-style options and from JSON Lines or CSV files."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

#: CSV columns read as integers or booleans; every other column is text.
_INT_FIELDS = frozenset({"nodes", "ntasks", "cpus_per_task"})
_BOOL_FIELDS = frozenset({"hold"})
_TRUE = frozenset({"1", "true", "yes", "y"})


def dependencies(text: str | None) -> list[dict[str, Any]] | None:
    """sbatch's ``--dependency`` syntax (``afterok:123:r…,afterany:456``) as the API's list."""
    if not text:
        return None
    found = []
    for part in text.split(","):
        kind, _, ids = part.partition(":")
        if not ids:
            raise click.BadParameter(f"{part!r}: expected TYPE:JOBID[:JOBID…]", param_hint="-d")
        found.append({"type": kind, "jobs": ids.split(":")})
    return found


def exports(values: Iterable[str]) -> dict[str, str] | None:
    """``--export K=V`` values as the job's environment."""
    env = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{value!r}: expected NAME=VALUE", param_hint="--export")
        env[name] = text
    return env or None


def read_script(path: str) -> str:
    """A script file's text (``-``: standard input)."""
    with click.open_file(path, encoding="utf-8") as handle:
        return str(handle.read())


def read_specs(path: Path, default_script: str | None = None) -> list[dict[str, Any]]:
    """Job specs from ``.jsonl`` (one JSON object a line) or ``.csv`` (a header of field names).

    CSV columns are the spec's fields; ``env.NAME`` columns go to ``environment``, ``tag.KEY``
    to ``tags``, ``dependency`` uses sbatch's syntax and ``script_file`` names a script to
    read. A row without a script gets ``default_script`` (``--script``). Empty cells are unset.
    """
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            specs = [_row(row, path.parent) for row in csv.DictReader(handle)]
    else:
        specs = read_jsonl(path)
    if default_script is not None:
        for spec in specs:
            spec.setdefault("script", default_script)
    return specs


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a ``.jsonl`` file, one a line (blank lines skipped); a line that is
    not a JSON object is a BadParameter naming it."""
    objects: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:
                raise click.BadParameter(f"{path}:{number}: {exc}") from exc
            if not isinstance(value, dict):
                raise click.BadParameter(f"{path}:{number}: not a JSON object")
            objects.append(value)
    return objects


def _row(row: dict[str, str], base: Path) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    for column, raw in row.items():
        value = (raw or "").strip()
        if not column or not value:
            continue
        if column.startswith("env."):
            spec.setdefault("environment", {})[column[4:]] = value
        elif column.startswith("tag."):
            spec.setdefault("tags", {})[column[4:]] = value
        elif column == "script_file":
            spec["script"] = (base / value).read_text(encoding="utf-8")
        elif column == "dependency":
            spec["dependency"] = dependencies(value)
        elif column in _INT_FIELDS:
            spec[column] = int(value) if value.isdigit() else value
        elif column in _BOOL_FIELDS:
            spec[column] = value.lower() in _TRUE
        else:
            spec[column] = value.replace("\\n", "\n") if column == "script" else value
    return spec
