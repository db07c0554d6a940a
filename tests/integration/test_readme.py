"""The README quick start, run as written, so the README cannot rot.

Runs `make up` (the first set-up command; on free ports and a private run directory, so a
developer's own stack is left alone), then the Quick start's curl example, and checks that the
job SUCCEEDED. `make test`, the second command, is what runs this test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.local.launcher import free_port
from tests.conftest import ROOT

pytestmark = [pytest.mark.slurm, pytest.mark.integration]


def quick_start() -> str:
    return (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", quick_start(), re.S)


def test_quick_start_names_exactly_the_two_commands() -> None:
    # GIVEN the README's quick start / THEN its first block is exactly `make up` and `make test`
    commands = [line.split("#")[0].strip() for line in bash_blocks()[0].splitlines()]
    assert [c for c in commands if c] == ["make up", "make test"]
    # AND CI runs exactly that test command
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.fixture
def stack_banner(slurm: dict[str, str], tmp_path: Path) -> Iterator[str]:
    run_dir = tmp_path / "run"
    make_vars = [f"API_PORT={free_port()}", "MOTO_PORT=0", f"RUN_DIR={run_dir}"]
    up = subprocess.run(
        ["make", "up", *make_vars],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=dict(os.environ),
    )
    assert up.returncode == 0, up.stdout + up.stderr
    yield up.stdout
    subprocess.run(
        [
            str(ROOT / ".venv/bin/python"),
            "-m",
            "broker.local",
            "--run-file",
            str(run_dir / "local-stack.json"),
            "down",
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )


def run(command: str) -> dict[str, object]:
    done = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=30, check=True
    )
    return dict(json.loads(done.stdout))


def test_quick_start_example_runs_a_job(stack_banner: str) -> None:
    # GIVEN `make up` printed the API address
    match = re.search(r"API:\s+(http://127\.0\.0\.1:\d+)", stack_banner)
    assert match, stack_banner
    # AND the README's example, as written but for the port
    example = bash_blocks()[1].replace("http://127.0.0.1:8080", match.group(1))
    post = example.split("\n# ->")[0]
    get = next(line for line in example.splitlines() if "/v1/requests/<request_id>" in line)
    # WHEN the POST is run, then the GET until the request is final
    accepted = run(post)
    get = get.replace("<request_id>", str(accepted["request_id"]))
    deadline = time.monotonic() + 60
    answer = run(get)
    while answer["state"] not in {"SUCCEEDED", "FAILED"} and time.monotonic() < deadline:
        time.sleep(0.3)
        answer = run(get)
    # THEN the job SUCCEEDED with a Slurm job id, as the README shows
    assert answer["state"] == "SUCCEEDED", answer
    assert isinstance(answer["result"], dict)
    assert answer["result"]["job_id"]


# -- "Use it": every example, as written, against the local stack --------------------------------

README_NAMES = ("readme-curl", "readme-py", "readme-cli")


def use_it_blocks(language: str) -> list[str]:
    section = (ROOT / "README.md").read_text().split("## Use it", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


@pytest.fixture(scope="module")
def use_it_env(
    slurm: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """The local stack, its run file, and an `hpcb` on PATH (the console script's stand-in)."""
    from tests.conftest import local_stack  # noqa: PLC0415

    base = tmp_path_factory.mktemp("use-it")
    shim = base / "bin" / "hpcb"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec {ROOT / ".venv/bin/python"} -m broker.cli "$@"\n')
    shim.chmod(0o755)
    env = {"HPCB_SIMULATED_CLUSTER_SECONDS": "1", "HPCB_SWEEP_WINDOW_SECONDS": "0"}
    with local_stack(slurm, schedule_seconds=1, notifications_inbox=True, env=env) as stack:
        run_file = base / "local-stack.json"
        run_file.write_text(json.dumps({
            "api_url": stack.api_url,
            "moto_url": stack.moto_url,
            "region": stack.region,
            "notifications_queue_url": stack.notifications_queue_url,
        }))  # fmt: skip
        yield {
            **os.environ,
            "HPCB_ENDPOINT": stack.api_url,
            "HPCB_RUN_FILE": str(run_file),
            "HPCB_CONFIG": str(base / "config.toml"),
            "PATH": f"{shim.parent}:{os.environ['PATH']}",
        }
    for name in README_NAMES:
        subprocess.run(["scancel", "-n", name], capture_output=True, check=False)


def test_use_it_has_a_curl_a_python_and_a_cli_example() -> None:
    assert len(use_it_blocks("bash")) == 2
    assert len(use_it_blocks("python")) == 1


@pytest.mark.parametrize("which", [0, 1], ids=["curl", "cli"])
def test_use_it_shell_examples_run(use_it_env: dict[str, str], which: int) -> None:
    # GIVEN the README's example / WHEN run as written, failing on the first error
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", use_it_blocks("bash")[which]],
        cwd=ROOT,
        env=use_it_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # THEN it succeeded
    assert done.returncode == 0, done.stdout + done.stderr


def test_use_it_python_example_runs(
    use_it_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN the README's Python example / WHEN run as written
    for key in ("HPCB_ENDPOINT", "HPCB_RUN_FILE", "HPCB_CONFIG"):
        monkeypatch.setenv(key, use_it_env[key])
    monkeypatch.chdir(ROOT)
    exec(compile(use_it_blocks("python")[0], "README.md", "exec"), {})  # noqa: S102 - our README
    # THEN it printed what the comments say
    out = capsys.readouterr().out
    for expected in (
        "SUCCEEDED",
        "COMPLETED",
        "hello",
        "100 ",
        "CREATE_COMPLETE",
        "DELETE_COMPLETE",
    ):
        assert expected in out
