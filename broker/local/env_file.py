"""Shell env files (``export KEY=VALUE``), such as the one ``scripts/slurm.sh`` writes."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Final

_ENV_LINE: Final = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def read_env_file(path: Path) -> dict[str, str]:
    """``export KEY=VALUE`` / ``KEY=VALUE`` lines of a shell env file (quotes removed).

    ``$VAR`` references are expanded against the current environment; other lines are ignored.
    """
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        found = _ENV_LINE.match(line.strip())
        if found is None:
            continue
        raw = found.group(2).strip()
        try:
            words = shlex.split(raw, comments=True)
        except ValueError:
            words = [raw]
        values[found.group(1)] = os.path.expandvars(" ".join(words))
    return values
