"""Where the client finds its endpoint, region, profile and identity.

First found wins, field by field:

1. explicit arguments (the CLI's ``--endpoint``, ``--stack``, ``--region``, ``--profile``);
2. the environment: ``HPCB_ENDPOINT``, ``HPCB_STACK``, ``HPCB_REGION``, ``HPCB_PROFILE``,
   ``HPCB_PRINCIPAL``;
3. the configuration file ``$HPCB_CONFIG``, else ``$XDG_CONFIG_HOME/hpcb/config.toml``, else
   ``~/.config/hpcb/config.toml`` (written by ``hpcb configure``);
4. a CloudFormation stack's ``ApiUrl`` output, when a stack name was given by any of the above;
5. the local stack's run file (``.run/local-stack.json``, or ``$HPCB_RUN_FILE``), when one is up.

An endpoint on 127.0.0.1/localhost is the local stack: calls carry the
``X-Hpcb-Local-Principal`` header when a principal is set, and are not signed. Any other
endpoint is signed with SigV4.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from broker.client.errors import ConfigurationError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RUN_FILE = REPO_ROOT / ".run" / "local-stack.json"
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_KEYS = ("endpoint", "stack", "region", "profile", "principal")


@dataclass(frozen=True)
class Settings:
    """What a client needs to reach the API; ``source`` says where the endpoint came from."""

    endpoint: str | None = None
    stack: str | None = None
    region: str | None = None
    profile: str | None = None
    principal: str | None = None
    source: str = "unset"

    @property
    def local(self) -> bool:
        """Whether the endpoint is the local stack (no SigV4)."""
        return self.endpoint is not None and urlsplit(self.endpoint).hostname in _LOCAL_HOSTS


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """The configuration file's path (it may not exist)."""
    env = os.environ if env is None else env
    if env.get("HPCB_CONFIG"):
        return Path(env["HPCB_CONFIG"])
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "hpcb" / "config.toml"


def load_config(path: Path) -> dict[str, str]:
    """The file's known keys (a missing file is empty).

    Raises:
        ConfigurationError: the file is not valid TOML.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"{path}: {exc}") from exc
    return {k: str(v) for k, v in data.items() if k in _KEYS and v not in (None, "")}


def save_config(path: Path, values: Mapping[str, str | None]) -> Path:
    """Write the known keys to ``path`` (mode 600; parent created); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A JSON string is a valid TOML basic string (same escapes), so no TOML writer is needed.
    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items() if k in _KEYS and v]
    path.write_text("# hpcb configuration (hpcb configure)\n" + "\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def local_stack_endpoint(env: Mapping[str, str] | None = None) -> str | None:
    """The API address of the local stack recorded in the run file, if there is one."""
    env = os.environ if env is None else env
    run_file = Path(env.get("HPCB_RUN_FILE") or DEFAULT_RUN_FILE)
    try:
        info = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    url = info.get("api_url") if isinstance(info, dict) else None
    return str(url) if url else None


def stack_api_url(stack: str, *, region: str | None = None, profile: str | None = None) -> str:
    """The ``ApiUrl`` output of a deployed CloudFormation stack.

    Raises:
        ConfigurationError: no such stack, no such output, or AWS could not be asked.
    """
    import botocore.session  # noqa: PLC0415 - only when a stack name is given
    from botocore.exceptions import BotoCoreError  # noqa: PLC0415
    from botocore.exceptions import ClientError as AwsClientError  # noqa: PLC0415

    session = botocore.session.Session(profile=profile)
    try:
        cloudformation = session.create_client("cloudformation", region_name=region)
        answer: dict[str, Any] = cloudformation.describe_stacks(StackName=stack)
    except (BotoCoreError, AwsClientError) as exc:
        raise ConfigurationError(f"stack {stack}: {exc}") from exc
    for described in answer.get("Stacks", []):
        for output in described.get("Outputs", []):
            if output.get("OutputKey") == "ApiUrl":
                return str(output["OutputValue"])
    raise ConfigurationError(f"stack {stack} has no ApiUrl output")


def resolve(
    *,
    endpoint: str | None = None,
    stack: str | None = None,
    region: str | None = None,
    profile: str | None = None,
    principal: str | None = None,
    env: Mapping[str, str] | None = None,
    lookup_stack: bool = True,
) -> Settings:
    """The settings from arguments, environment, configuration file, stack and run file.

    Raises:
        ConfigurationError: the configuration file or the stack could not be read.
    """
    env = os.environ if env is None else env
    given = {
        "endpoint": endpoint,
        "stack": stack,
        "region": region,
        "profile": profile,
        "principal": principal,
    }
    from_env = {k: env.get(f"HPCB_{k.upper()}") for k in _KEYS}
    from_file = load_config(config_path(env))
    values: dict[str, str | None] = {}
    for key in _KEYS:
        values[key] = given[key] or from_env[key] or from_file.get(key)
    # Where the endpoint comes from: the first layer that names an endpoint or a stack.
    source = "unset"
    for name, layer in (("argument", given), ("environment", from_env), ("config", from_file)):
        if layer.get("endpoint"):
            values["endpoint"], values["stack"], source = layer["endpoint"], None, name
            break
        if layer.get("stack"):
            values["endpoint"], values["stack"], source = None, layer["stack"], f"{name} stack"
            break
    if values["endpoint"] is None and values["stack"] and lookup_stack:
        values["endpoint"] = stack_api_url(
            values["stack"], region=values["region"], profile=values["profile"]
        )
    if values["endpoint"] is None and values["stack"] is None:
        values["endpoint"] = local_stack_endpoint(env)
        source = "local run file" if values["endpoint"] else "unset"
    known = {f.name for f in fields(Settings)}
    return Settings(**{k: v for k, v in values.items() if k in known}, source=source)
