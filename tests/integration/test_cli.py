"""``hpcb`` through click's CliRunner against the local stack (real Slurm), itself started with
``hpcb local up``: each command's human and ``--json`` output and its exit code, and
submit-many's progress on 1,000 jobs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from broker.cli.main import cli
from broker.client import BrokerClient
from tests.integration.client_support import ALICE, CLUSTER_CONFIG, cancel_named, slurm_jobs_named

pytestmark = [pytest.mark.slurm, pytest.mark.integration]


#: The local stack's default caller, and its administrator (python -m broker.local up).
LOCAL_DEVELOPER = "arn:aws:iam::000000000000:user/local-developer"


@pytest.fixture(scope="module")
def stack(
    slurm: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """`hpcb local up` in a process of its own (its handlers' output stays out of the CLI's),
    on a free port and a private run file; `hpcb local down` afterwards."""
    # Not under pytest's basetemp: other pytest runs on this machine prune old basetemps.
    run_file = Path(tempfile.mkdtemp(prefix="hpcb-cli-")) / "local-stack.json"
    saved = os.environ.get("HPCB_SIMULATED_CLUSTER_SECONDS")
    os.environ["HPCB_SIMULATED_CLUSTER_SECONDS"] = "1"
    try:
        up = CliRunner().invoke(
            cli,
            ["--json", "local", "up", "--api-port", "0", "--no-slurm", "--run-file", str(run_file)],
        )
    finally:
        if saved is None:
            os.environ.pop("HPCB_SIMULATED_CLUSTER_SECONDS")
        else:
            os.environ["HPCB_SIMULATED_CLUSTER_SECONDS"] = saved
    assert up.exit_code == 0, up.output
    info = json.loads(up.output)
    # The tests act as alice: the stack's administrator maps her, as for the local developer.
    mapped = subprocess.run(
        [sys.executable, "-m", "broker.local", "--run-file", str(run_file), "users", "map",
         "--cluster", "local", "--principal", ALICE, "--user", "hpcb-dev"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert mapped.returncode == 0, mapped.stderr
    yield {**info, "run_file": str(run_file)}
    # A sweep still recording the tests' cancelled jobs can keep the stack's process alive
    # past its "stopped" (seen: over 240 s after 1,000 jobs): --force ends its process group.
    down = CliRunner().invoke(
        cli, ["local", "down", "--run-file", str(run_file), "--timeout", "20", "--force"]
    )
    assert down.exit_code == 0, down.output


@pytest.fixture
def hpcb(stack: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Runs ``hpcb`` against the test stack, as alice, with no user configuration."""
    monkeypatch.setenv("HPCB_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("HPCB_RUN_FILE", stack["run_file"])
    for name in ("HPCB_ENDPOINT", "HPCB_STACK", "HPCB_PRINCIPAL"):
        monkeypatch.delenv(name, raising=False)

    def run(*args: str, endpoint: bool = True) -> Result:
        base = ["--endpoint", stack["api_url"], "--principal", ALICE] if endpoint else []
        return CliRunner().invoke(cli, [*base, *args], catch_exceptions=False)

    return run


@pytest.fixture
def name() -> Iterator[str]:
    unique = f"hpcb-{uuid.uuid4().hex[:10]}"
    yield unique
    cancel_named(unique)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "job.sh"
    path.write_text("#!/bin/bash\necho hello from hpcb\n")
    return path


def test_submit_wait_show_list_output(hpcb, name: str, script: Path) -> None:  # type: ignore[no-untyped-def]
    # WHEN a job is submitted with sbatch's options and --wait
    done = hpcb("--json", "jobs", "submit", "local", str(script), "-J", name, "-n", "1", "--wait")
    # THEN it exits 0 with the completed job as JSON
    assert done.exit_code == 0, done.output
    job = json.loads(done.output[done.output.index("{") :])
    assert (job["state"], job["exit_code"], job["name"]) == ("COMPLETED", 0, name)
    # AND show, list and output find it, in tables and in JSON
    shown = hpcb("jobs", "show", "local", job["job_id"])
    assert shown.exit_code == 0
    assert "COMPLETED" in shown.output
    listed = hpcb("jobs", "list", "local", "--name", name)
    assert job["job_id"] in listed.output
    assert "state" in listed.output.splitlines()[0]
    as_json = json.loads(hpcb("--json", "jobs", "list", "local", "--name", name).output)
    assert [j["job_id"] for j in as_json["jobs"]] == [job["job_id"]]
    output = hpcb("jobs", "output", "local", job["job_id"], "--stream", "stdout")
    assert output.output == "hello from hpcb\n"
    followed = hpcb("jobs", "output", "local", job["job_id"], "--follow")
    assert followed.output == "hello from hpcb\n"


def test_submit_then_cancel_then_cancel_again(
    hpcb, stack: dict[str, Any], name: str, script: Path
) -> None:  # type: ignore[no-untyped-def]
    # GIVEN a held job
    accepted = json.loads(
        hpcb("--json", "jobs", "submit", "local", str(script), "-J", name, "--hold").output
    )
    waited = hpcb("requests", "wait", accepted["request_id"])
    assert waited.exit_code == 0
    assert "SUCCEEDED" in waited.output
    # WHEN it is cancelled with --wait / THEN exit 0
    cancel = hpcb("jobs", "cancel", "local", accepted["request_id"], "--wait")
    assert cancel.exit_code == 0, cancel.output
    client = BrokerClient(stack["api_url"], principal=ALICE)
    assert client.wait_for_job("local", accepted["request_id"], timeout=60).state == "CANCELLED"
    # AND a second cancel is refused: exit 1 with the API's error on stderr
    again = hpcb("--json", "jobs", "cancel", "local", accepted["request_id"])
    assert again.exit_code == 1
    assert json.loads(again.stderr)["error"]["code"] == "CONFLICT"


def test_exit_codes(hpcb, script: Path) -> None:  # type: ignore[no-untyped-def]
    # GIVEN requests that are not found, invalid, failed, timed out, and bad usage
    missing = hpcb("requests", "show", "r" + "0" * 28)
    invalid = hpcb("jobs", "submit", "local", str(script), "-N", "0")
    failed = hpcb("jobs", "submit", "local", str(script), "-p", "nope", "--wait")
    usage = hpcb("jobs", "submit")
    accepted = json.loads(hpcb("--json", "jobs", "submit", "local", str(script), "-H").output)
    timeout = hpcb("jobs", "submit", "local", str(script), "-H", "--wait", "--timeout", "2")
    hpcb("jobs", "cancel", "local", accepted["request_id"])
    # THEN 4, 2, 1, 2 and 3, as documented
    assert (missing.exit_code, invalid.exit_code, failed.exit_code) == (4, 2, 1)
    assert (usage.exit_code, timeout.exit_code) == (2, 3)
    assert "body.nodes" in invalid.stderr
    assert "Exit codes" in hpcb("--help").output


def test_a_cluster_round_trip(hpcb, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "cluster.yaml"
    config.write_text(CLUSTER_CONFIG)
    cluster = f"hpcb-{uuid.uuid4().hex[:8]}"
    dry = hpcb("clusters", "create", cluster, "-c", str(config), "--dryrun", "--wait")
    assert dry.exit_code == 0, dry.output
    created = hpcb("clusters", "create", cluster, "-c", str(config), "--wait")
    assert created.exit_code == 0, created.output
    assert cluster in hpcb("clusters", "list").output
    described = json.loads(hpcb("--json", "clusters", "describe", cluster).output)
    assert described["status"] == "CREATE_COMPLETE"
    assert hpcb("clusters", "fleet", "stop", cluster, "--wait").exit_code == 0
    assert (
        hpcb("clusters", "update", cluster, "-c", str(config), "--dryrun", "--wait").exit_code == 0
    )
    deleted = hpcb("--json", "clusters", "delete", cluster, "--wait")
    assert json.loads(deleted.output[deleted.output.index("{") :])["state"] == "SUCCEEDED"


def test_events_tail_prints_the_inbox(hpcb, script: Path) -> None:  # type: ignore[no-untyped-def]
    # GIVEN a finished job (the run file is found through HPCB_RUN_FILE)
    done = hpcb("--json", "jobs", "submit", "local", str(script), "--wait")
    job_id = json.loads(done.output[done.output.index("{") :])["job_id"]
    # WHEN the events are tailed (JSON lines)
    lines = hpcb("--json", "events", "tail", "--wait", "5").output
    events = [json.loads(line)["message"] for line in lines.splitlines() if line.strip()]
    # THEN the job's state change is there
    assert any(e.get("type") == "job.state_changed" and e.get("job_id") == job_id for e in events)


def test_configure_writes_the_file_the_client_reads(
    hpcb, stack: dict[str, Any], tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    # WHEN configure saves the endpoint / THEN later commands need no --endpoint
    saved = hpcb("configure", "--endpoint", stack["api_url"], "--principal", ALICE, endpoint=False)
    assert saved.exit_code == 0
    assert (tmp_path / "config.toml").exists()
    assert hpcb("--json", "clusters", "list", endpoint=False).exit_code == 0


def test_local_status_of_no_stack_is_exit_4(hpcb, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    status = hpcb("local", "status", "--run-file", str(tmp_path / "none.json"), endpoint=False)
    assert status.exit_code == 4
    assert "not running" in status.output


def test_submit_many_shows_progress_and_a_summary(hpcb, name: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # GIVEN a file of 1,000 held jobs and one invalid line
    jobs = tmp_path / "jobs.jsonl"
    spec = {"script": "#!/bin/bash\ntrue\n", "name": name, "hold": True}
    jobs.write_text("\n".join([json.dumps(spec)] * 1000 + [json.dumps({"script": "x"})]) + "\n")
    # WHEN submit-many sends and follows them
    result = hpcb("jobs", "submit-many", "local", str(jobs))
    # THEN the progress bars end full and the summary counts every item
    out = result.output
    assert "accepted" in out
    assert "in Slurm" in out
    assert "1000/1001" in out
    for row in ("items +1001", "accepted +1000", "rejected +1", "in Slurm +1000"):
        assert re.search(rf"^ *{row} *$", out, re.M), row
    assert "item 1000: rejected VALIDATION_ERROR" in out
    # AND exit 1, because one item was rejected; Slurm holds the 1,000 once each
    assert result.exit_code == 1
    assert len({c for _, c in slurm_jobs_named(name)}) == 1000


def test_submit_many_json_from_csv(hpcb, name: str, tmp_path: Path, script: Path) -> None:  # type: ignore[no-untyped-def]
    # GIVEN a CSV of 20 held jobs with an environment column and a shared --script
    rows = ["name,hold,env.APP_STEP"] + [f"{name},true,{i}" for i in range(20)]
    (tmp_path / "jobs.csv").write_text("\n".join(rows) + "\n")
    # WHEN submitted with --json
    result = hpcb(
        "--json",
        "jobs",
        "submit-many",
        "local",
        str(tmp_path / "jobs.csv"),
        "--script",
        str(script),
    )
    # THEN exit 0 and one JSON summary
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert (summary["accepted"], summary["in Slurm"], summary["problems"]) == (20, 20, [])


def test_admin_maps_and_unmaps_a_caller(hpcb, script: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    # GIVEN the stack's administrator (the local developer) and bob, mapped nowhere yet
    admin = ("--principal", LOCAL_DEVELOPER)
    bob = "arn:aws:iam::000000000000:user/cli-bob"
    refused = hpcb("--principal", bob, "jobs", "submit", "local", str(script), "-J", name, "-H")
    # WHEN the administrator maps bob, and lists the mappings
    mapped = hpcb(*admin, "admin", "users", "map", "local", bob, "hpcb-dev")
    listed = hpcb(*admin, "--json", "admin", "users", "list", "local")
    accepted = hpcb("--principal", bob, "jobs", "submit", "local", str(script), "-J", name, "-H")
    # THEN bob was refused before (exit 4: 403 NOT_MAPPED) and is accepted after
    assert refused.exit_code == 4, refused.output
    assert "NOT_MAPPED" in refused.output
    assert mapped.exit_code == 0, mapped.output
    assert {"principal": bob, "user": "hpcb-dev"}.items() <= next(
        m for m in json.loads(listed.output)["mappings"] if m["principal"] == bob
    ).items()
    assert accepted.exit_code == 0, accepted.output
    # WHEN the administrator unmaps bob / THEN bob is refused again
    assert hpcb(*admin, "admin", "users", "unmap", "local", bob).exit_code == 0
    again = hpcb("--principal", bob, "jobs", "submit", "local", str(script), "-J", name, "-H")
    assert again.exit_code == 4, again.output
    # AND for a caller who is not an administrator the admin commands do not exist (404, exit 4)
    assert hpcb("admin", "users", "list", "local").exit_code == 4


def test_sweep_runs_the_script_once_per_csv_row_as_one_array(  # type: ignore[no-untyped-def]
    hpcb, name: str, tmp_path: Path, script: Path
) -> None:
    # GIVEN a CSV of 12 parameter sets, and one naming a reserved variable
    rows = ["PARAM_X,app_label"] + [f"{i},r{i}" for i in range(12)]
    (tmp_path / "params.csv").write_text("\n".join(rows) + "\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("PATH\n/evil\n")
    # WHEN swept, held, and waited for
    result = hpcb("jobs", "sweep", "local", str(script), str(tmp_path / "params.csv"),
                  "--job-name", name, "--hold", "--wait")  # fmt: skip
    # THEN exit 0, 12 accepted and in Slurm, as the tasks of one array
    assert result.exit_code == 0, result.output
    assert re.search(r"^ *accepted +12 *$", result.output, re.M), result.output
    assert re.search(r"^ *in Slurm +12 *$", result.output, re.M), result.output
    jobs = slurm_jobs_named(name)
    assert len({c for _, c in jobs}) == 1
    # AND a file naming a reserved variable is refused: exit 2 (invalid input), the field named
    refused = hpcb("jobs", "sweep", "local", str(script), str(bad), "--job-name", name)
    assert refused.exit_code == 2
    assert "body.parameters.0.PATH" in refused.output
