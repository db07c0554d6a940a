"""Shared fixtures: a moto server over real HTTP, resources provisioned from template.yaml,
and the real local Slurm (skipped when absent, unless REQUIRE_SLURM=1 makes that a failure).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Powertools reads these when broker.observability is first imported: set them before any
# broker import (template.yaml sets them in AWS).
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "HpcBrokerTests")
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "hpc-broker-tests")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")

import boto3
import pytest
import requests
from moto.server import ThreadedMotoServer

from broker.adapters import aws
from broker.local.moto_patches import patch_moto
from broker.local.provision import Provisioned, provision
from broker.local.template import load_template

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
SLURM_PREFIX = Path(os.environ.get("HPCB_SLURM_PREFIX", "/var/tmp/hpc-broker/slurm"))

_FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_METRICS_NAMESPACE": "HpcBrokerTests",
    "POWERTOOLS_SERVICE_NAME": "hpc-broker-tests",
}


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """A moto server on 127.0.0.1 (random port); boto3 reaches it over HTTP via AWS_ENDPOINT_URL."""
    patch_moto()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in [*_FAKE_AWS_ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update(_FAKE_AWS_ENV)
    os.environ["AWS_ENDPOINT_URL"] = url
    aws.client.cache_clear()
    yield url
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    aws.client.cache_clear()


@dataclass
class AwsResources:
    """What template.yaml provisions in moto, by logical id."""

    provisioned: Provisioned
    url: str

    def ref(self, logical_id: str) -> str:
        return self.provisioned.physical_id(logical_id)

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.url, region_name=REGION)


@pytest.fixture
def aws_resources(moto_url: str) -> AwsResources:
    """A clean moto, with the template's queues, table and bucket created."""
    requests.post(f"{moto_url}/moto-api/reset", timeout=10).raise_for_status()
    provisioned = provision(
        load_template(TEMPLATE), region=REGION, account_id=ACCOUNT, endpoint_url=moto_url
    )
    return AwsResources(provisioned=provisioned, url=moto_url)


def _slurm_env() -> dict[str, str]:
    """Variables from the local Slurm's env file (SLURM_CONF, ...)."""
    env: dict[str, str] = {}
    path = SLURM_PREFIX / "env"
    if path.exists():
        for raw in path.read_text().splitlines():
            line = raw.strip().removeprefix("export ").strip()
            if "=" in line and not line.startswith("#"):
                key, value = line.split("=", 1)
                env[key] = value.strip("'\"")
    return env


@pytest.fixture(scope="session")
def slurm() -> dict[str, str]:
    """The real local Slurm (scripts/slurm.sh up). Returns its client environment.

    Without it the test is skipped, unless REQUIRE_SLURM=1 (CI), where that is a failure.
    """
    status = subprocess.run(
        [str(ROOT / "scripts" / "slurm.sh"), "status"], capture_output=True, text=True, check=False
    )
    env = _slurm_env()
    if status.returncode != 0 or not env.get("SLURM_CONF") or not shutil.which("sbatch"):
        reason = f"local Slurm is not up (scripts/slurm.sh up): {status.stdout}{status.stderr}"
        if os.environ.get("REQUIRE_SLURM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    subprocess.run([str(ROOT / "scripts" / "local-user.sh")], check=True)  # hpcb-dev
    os.environ.update(env)
    return env


#: The callers the integration tests act as, each mapped to the local non-root user on the
#: cluster "local" (scripts/local-user.sh); a test of its own mappings passes ``users=``.
TEST_USERS: dict[str, str] = {
    f"arn:aws:iam::000000000000:user/{name}": "hpcb-dev"
    for name in ("alice", "bob", "local-developer", "bench", "chaos")
}


@contextmanager
def local_stack(slurm_env: dict[str, str], **options: Any) -> Iterator[Any]:
    """The template's local stack in this process, in local cluster mode, on the real Slurm.

    ``options`` go to LocalStack (schedules, inbox, ...); ``env`` adds environment overrides;
    ``users`` maps callers to POSIX users on "local" (default ``TEST_USERS``).
    """
    from broker import wiring  # noqa: PLC0415
    from broker.local.stack import LocalStack  # noqa: PLC0415

    env = {
        "HPCB_CLUSTERS_MODE": "local",
        "HPCB_LOCAL_CLUSTERS": "local",
        "POWERTOOLS_TRACE_DISABLED": "true",
        **options.pop("env", {}),
        **slurm_env,
    }
    users = options.pop("users", TEST_USERS)
    wiring.reset()
    stack = LocalStack(TEMPLATE, env_overrides=env, access_log=False, **options)
    stack.start()
    for principal, user in users.items():
        stack.map_user("local", principal, user)
    try:
        yield stack
    finally:
        stack.stop()
        wiring.reset()
