"""The agent acts as the request's POSIX user, never as root: the user's validation
(``resolve_user``), the ``setpriv`` argv and clean environment of sbatch, scancel and the output
reader, the per-user token search, and the owner/token checks before a cancel or a read. No Slurm:
the runner is faked, users come from a fake passwd (tests/unit/test_agent.py), the output reader
runs for real as this process's user. The same on the real Slurm with real users:
tests/integration/test_agent_users_slurm.py."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from broker.agent import hpcb_agent as agent
from broker.agent.hpcb_agent import Agent, AgentError, resolve_user
from tests.unit.test_agent import (
    AGENT_ENV,
    SCRIPT,
    SETPRIV_ALICE,
    FakeSlurm,
    getpwnam,
    is_reader,
    run_reader,
    unwrap,
)

DEDUP = "hpcb:rmine"
SETPRIV_BOB = ["setpriv", "--reuid=1002", "--regid=1002", "--init-groups", "--"]


def b64(document: Any) -> str:
    return base64.b64encode(json.dumps(document).encode()).decode()


def ask(slurm: Any, request: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    subject = Agent(
        run=slurm, lock_path=str(tmp_path / "lock"), lookup_user=getpwnam, environ=AGENT_ENV
    )
    answer: dict[str, Any] = json.loads(subject.answer(b64({"v": 1, **request})))
    return answer


def submit_job(user: Any, token: str = DEDUP) -> dict[str, Any]:
    return {"token": token, "script": SCRIPT, "user": user, "environment": {"APP_MYVAR": "1"}}


# ---- resolve_user: who the agent may act as -----------------------------------------------------


def test_a_normal_user_gets_its_setpriv_prefix_and_clean_environment() -> None:
    # GIVEN alice (uid 1001) / WHEN resolved with the default minimum
    run_as = resolve_user("alice", 1000, getpwnam)
    # THEN setpriv to her uid, gid and groups, and an environment of hers alone
    assert run_as.prefix() == SETPRIV_ALICE
    assert run_as.environment(AGENT_ENV) == {
        "HOME": "/home/alice",
        "USER": "alice",
        "LOGNAME": "alice",
        "PATH": agent.user_path(AGENT_ENV["PATH"]),
        "SLURM_CONF": "/etc/slurm/slurm.conf",
    }


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("root", "uid or group 0"),
        ("toor", "uid or group 0"),  # uid 0 under another name
        ("wheel", "uid or group 0"),  # primary group 0
        ("daemon", "uid 1 is below 1000"),
        ("svc", "uid 999 is below 1000"),
        ("nosuchuser", "no user"),
        ("Alice", "not a POSIX user name"),
        ("-ualice", "not a POSIX user name"),
        ("alice;id", "not a POSIX user name"),
        ("alice\n", "not a POSIX user name"),
        ("../alice", "not a POSIX user name"),
        ("a" * 33, "not a POSIX user name"),
        ("", "not a POSIX user name"),
        (None, "not a POSIX user name"),
        (1001, "not a POSIX user name"),
    ],
)
def test_users_the_agent_must_not_act_as_are_refused(name: Any, why: str) -> None:
    # GIVEN a user that is root, a system user, unknown or not a name / WHEN resolved
    with pytest.raises(AgentError) as caught:
        resolve_user(name, 1000, getpwnam)
    # THEN a permanent USER_REFUSED saying why
    assert (caught.value.code, caught.value.transient) == (agent.USER_REFUSED, False)
    assert why in caught.value.message


def test_uid_0_is_refused_even_with_the_lowest_min_uid() -> None:
    # GIVEN a request lowering min_uid to 1 / WHEN root is resolved / THEN still refused
    with pytest.raises(AgentError, match="uid or group 0"):
        resolve_user("root", 1, getpwnam)


@pytest.mark.parametrize("min_uid", [0, -1, 2**32, "1000", True, 1.5])
def test_unacceptable_min_uid_is_a_bad_request_before_any_slurm_call(
    tmp_path: Path, min_uid: Any
) -> None:
    # GIVEN a submit whose min_uid is 0, negative or not an integer
    slurm = FakeSlurm()
    request = {"op": "submit", "jobs": [submit_job("alice")], "min_uid": min_uid}
    # WHEN answered / THEN BAD_REQUEST naming min_uid, nothing ran
    error = ask(slurm, request, tmp_path)["error"]
    assert error["code"] == agent.BAD_REQUEST
    assert "min_uid" in error["message"]
    assert slurm.calls == []


# ---- submit -------------------------------------------------------------------------------------


def test_sbatch_runs_as_the_jobs_user_with_only_its_environment(tmp_path: Path) -> None:
    # GIVEN alice's job with a variable / WHEN submitted
    slurm = FakeSlurm()
    ask(slurm, {"op": "submit", "jobs": [submit_job("alice")]}, tmp_path)
    # THEN sbatch ran under setpriv as alice, with her environment plus the job's variable, and
    # none of the agent's (no AWS secret, no site squeue format, not root's HOME)
    ((argv, _),) = [call for call in slurm.calls if unwrap(call[0])[0] == "sbatch"]
    env = slurm.envs[slurm.calls.index((argv, _))]
    assert argv[: len(SETPRIV_ALICE) + 2] == [*SETPRIV_ALICE, "sbatch", "--parsable"]
    assert env == {
        "HOME": "/home/alice",
        "USER": "alice",
        "LOGNAME": "alice",
        "PATH": agent.user_path(AGENT_ENV["PATH"]),
        "SLURM_CONF": "/etc/slurm/slurm.conf",
        "APP_MYVAR": "1",
    }


def test_token_search_asks_slurm_about_the_jobs_user_only(tmp_path: Path) -> None:
    # GIVEN alice's job / WHEN submitted
    slurm = FakeSlurm()
    ask(slurm, {"op": "submit", "jobs": [submit_job("alice")]}, tmp_path)
    # THEN squeue and sacct ran as the agent (read-only) for alice's jobs (-u alice)
    (squeue,) = [argv for argv, _ in slurm.calls if argv[0] == "squeue"]
    (sacct,) = [argv for argv, _ in slurm.calls if argv[0] == "sacct"]
    assert squeue == [*agent.SQUEUE_ARGV, "-u", "alice"]
    assert sacct[sacct.index("-u") + 1] == "alice"


@pytest.mark.parametrize("user", ["root", "daemon", "nosuchuser", "Bad", None])
def test_refused_user_fails_its_job_before_any_slurm_call(tmp_path: Path, user: Any) -> None:
    # GIVEN a job whose user the agent must not act as
    slurm = FakeSlurm()
    # WHEN submitted
    (result,) = ask(slurm, {"op": "submit", "jobs": [submit_job(user)]}, tmp_path)["results"]
    # THEN that job fails permanently with USER_REFUSED, and no Slurm client started at all
    assert (result["error"]["code"], result["error"]["transient"]) == (agent.USER_REFUSED, False)
    assert slurm.calls == []


def test_token_held_by_another_users_job_is_not_reused(tmp_path: Path) -> None:
    # GIVEN bob's job 77 carrying alice's token (slurmctld lists it even to a -u query's parser)
    slurm = FakeSlurm(squeue=f"77|bob|{DEDUP}\n")
    # WHEN alice's job with that token is submitted
    (result,) = ask(slurm, {"op": "submit", "jobs": [submit_job("alice")]}, tmp_path)["results"]
    # THEN alice's job is submitted as hers, not reported as bob's 77
    assert result["job_id"] != "77"
    assert "reused" not in result


def test_redelivery_as_the_same_user_finds_its_job(tmp_path: Path) -> None:
    # GIVEN alice's job 77 with the token already in Slurm
    slurm = FakeSlurm(squeue=f"77|alice|{DEDUP}\n")
    # WHEN the same job is submitted again / THEN 77 is reused, nothing submitted
    (result,) = ask(slurm, {"op": "submit", "jobs": [submit_job("alice")]}, tmp_path)["results"]
    assert (result["job_id"], result["reused"]) == ("77", True)
    assert slurm.commands("sbatch") == []


def test_jobs_of_two_users_in_one_call_each_run_as_their_user(tmp_path: Path) -> None:
    # GIVEN one job of alice's and one of bob's
    slurm = FakeSlurm()
    jobs = [submit_job("alice", "hpcb:ra"), submit_job("bob", "hpcb:rb")]
    # WHEN submitted together
    result = ask(slurm, {"op": "submit", "jobs": jobs, "concurrency": 1}, tmp_path)
    # THEN one token search per user, and each sbatch under its own user's setpriv
    assert [argv[-1] for argv, _ in slurm.calls if argv[0] == "squeue"] == ["alice", "bob"]
    prefixes = [argv[:5] for argv, _ in slurm.calls if unwrap(argv)[0] == "sbatch"]
    assert prefixes == [SETPRIV_ALICE, SETPRIV_BOB]
    assert [r["token"] for r in result["results"] if "job_id" in r] == ["hpcb:ra", "hpcb:rb"]


# ---- cancel -------------------------------------------------------------------------------------


class Scheduler:
    """Canned squeue (whose job each id is) and scancel answers; records argv (fake)."""

    def __init__(self, squeue: str) -> None:
        self.squeue = squeue
        self.calls: list[list[str]] = []

    def __call__(
        self, argv: list[str], stdin: bytes | None, timeout: float, env: dict[str, str]
    ) -> tuple[int, str, str]:
        self.calls.append(argv)
        return (0, self.squeue, "") if argv[0] == "squeue" else (0, "", "")


def cancel(slurm: Scheduler, tmp_path: Path, **target: str) -> dict[str, Any]:
    request = {"op": "cancel", "targets": [{"job_id": "77", "token": DEDUP, **target}]}
    (result,) = ask(slurm, request, tmp_path)["cancelled"]
    return dict(result)


def test_cancel_runs_scancel_as_the_jobs_user(tmp_path: Path) -> None:
    # GIVEN alice's job 77 with its token / WHEN alice cancels it
    slurm = Scheduler(f"77|alice|{DEDUP}\n")
    result = cancel(slurm, tmp_path, user="alice")
    # THEN scancel ran as alice
    assert result == {"job_id": "77", "ok": True}
    assert slurm.calls[-1] == [*SETPRIV_ALICE, "scancel", "-v", "77"]


def test_cancel_of_another_users_job_is_refused_without_scancel(tmp_path: Path) -> None:
    # GIVEN alice's job 77 / WHEN bob asks to cancel it (with its token)
    slurm = Scheduler(f"77|alice|{DEDUP}\n")
    result = cancel(slurm, tmp_path, user="bob")
    # THEN JOB_MISMATCH, permanent, and no scancel ran
    assert (result["error"]["code"], result["error"]["transient"]) == (agent.JOB_MISMATCH, False)
    assert [argv[0] for argv in slurm.calls] == ["squeue"]


def test_cancel_of_a_reused_slurm_id_is_refused_without_scancel(tmp_path: Path) -> None:
    # GIVEN Slurm id 77 now alice's other job (another token: a stale record's id was reused)
    slurm = Scheduler("77|alice|hpcb:rnewer\n")
    # WHEN the stale record's cancel arrives / THEN JOB_MISMATCH and no scancel
    result = cancel(slurm, tmp_path, user="alice")
    assert result["error"]["code"] == agent.JOB_MISMATCH
    assert [argv[0] for argv in slurm.calls] == ["squeue"]


def test_cancel_as_a_refused_user_runs_nothing(tmp_path: Path) -> None:
    # GIVEN root's job 77 / WHEN a cancel as root arrives / THEN USER_REFUSED, no Slurm call
    slurm = Scheduler(f"77|root|{DEDUP}\n")
    result = cancel(slurm, tmp_path, user="root")
    assert result["error"]["code"] == agent.USER_REFUSED
    assert slurm.calls == []


# ---- output -------------------------------------------------------------------------------------


class Controller:
    """scontrol and sacct from canned answers (fake); the output reader runs for real."""

    def __init__(self, scontrol: tuple[int, str, str], sacct: tuple[int, str, str]) -> None:
        self.answers = {"scontrol": scontrol, "sacct": sacct}
        self.calls: list[list[str]] = []
        self.reads: list[list[str]] = []

    def __call__(
        self, argv: list[str], stdin: bytes | None, timeout: float, env: dict[str, str]
    ) -> tuple[int, str, str]:
        if is_reader(argv):
            self.reads.append(argv)
            return run_reader(argv, timeout, env)
        self.calls.append(argv)
        return self.answers[argv[0]]


FORGOTTEN = (1, "", "slurm_load_jobs error: Invalid job id specified\n")


def scontrol_record(tmp_path: Path, user: str, comment: str) -> tuple[int, str, str]:
    """A one-line ``scontrol -o show job 77`` record of ``user``'s job with ``comment``."""
    line = (
        f"JobId=77 JobName=sbatch UserId={user}(1001) GroupId={user}(1001) Comment={comment} "
        f"JobState=COMPLETED WorkDir={tmp_path} StdErr={tmp_path}/slurm-77.out "
        f"StdIn=/dev/null StdOut={tmp_path}/slurm-77.out Power=\n"
    )
    return 0, line, ""


def read_output(slurm: Controller, tmp_path: Path, user: str = "alice") -> dict[str, Any]:
    query = {
        "job_id": "77",
        "user": user,
        "token": DEDUP,
        "patterns": {"stdout": f"{tmp_path}/slurm-%j.out"},
    }
    return ask(slurm, {"op": "output", "output": query}, tmp_path)


def test_output_is_read_by_a_child_running_as_the_jobs_user(tmp_path: Path) -> None:
    # GIVEN alice's job 77 and its output file
    (tmp_path / "slurm-77.out").write_text("hello\n")
    slurm = Controller(scontrol_record(tmp_path, "alice", DEDUP), FORGOTTEN)
    # WHEN read
    (chunk,) = read_output(slurm, tmp_path)["output"]
    # THEN the text, read by the constant reader program under setpriv as alice
    assert chunk["data"] == "hello\n"
    (read,) = slurm.reads
    assert read[: len(SETPRIV_ALICE) + 4] == [
        *SETPRIV_ALICE,
        "python3",
        "-I",
        "-c",
        agent.READ_CODE,
    ]
    assert read[-3:] == [f"{tmp_path}/slurm-77.out", "-1", str(agent.MAX_OUTPUT_BYTES)]


@pytest.mark.parametrize(("owner", "comment"), [("bob", DEDUP), ("alice", "hpcb:rnewer")])
def test_output_of_a_job_that_is_not_the_requests_is_refused_unread(
    tmp_path: Path, owner: str, comment: str
) -> None:
    # GIVEN Slurm's job 77 is bob's, or alice's but with another token (a reused id)
    (tmp_path / "slurm-77.out").write_text("secret\n")
    slurm = Controller(scontrol_record(tmp_path, owner, comment), FORGOTTEN)
    # WHEN alice's request for the job with DEDUP arrives
    result = read_output(slurm, tmp_path)
    # THEN JOB_MISMATCH, permanent, and nothing was read
    assert (result["error"]["code"], result["error"]["transient"]) == (agent.JOB_MISMATCH, False)
    assert slurm.reads == []
    assert "secret" not in json.dumps(result)


def test_output_of_a_forgotten_job_accounting_says_is_anothers_is_refused(tmp_path: Path) -> None:
    # GIVEN job 77 gone from slurmctld, and accounting's only record of 77 is bob's
    (tmp_path / "slurm-77.out").write_text("secret\n")
    slurm = Controller(FORGOTTEN, (0, f"77|sbatch|bob|vm|{DEDUP}\n", ""))
    # WHEN alice's request arrives / THEN JOB_MISMATCH, nothing read
    assert read_output(slurm, tmp_path)["error"]["code"] == agent.JOB_MISMATCH
    assert slurm.reads == []


def test_output_as_a_refused_user_runs_nothing(tmp_path: Path) -> None:
    # GIVEN a request to read as root / WHEN answered / THEN USER_REFUSED, no Slurm call, no read
    slurm = Controller(FORGOTTEN, FORGOTTEN)
    assert read_output(slurm, tmp_path, user="root")["error"]["code"] == agent.USER_REFUSED
    assert (slurm.calls, slurm.reads) == ([], [])


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_reader_refuses_a_file_its_user_does_not_own(tmp_path: Path) -> None:
    # GIVEN a file owned by uid 1001, read by a reader running as this user (root)
    path = tmp_path / "out"
    path.write_text("secret\n")
    os.chown(path, 1001, 1001)
    # WHEN read / THEN OUTPUT_UNREADABLE, nothing of the file
    with pytest.raises(AgentError) as caught:
        agent.read_chunk(str(path), 0, 100)
    assert caught.value.code == agent.OUTPUT_UNREADABLE
    assert "not a file of the job's user" in caught.value.message


# ---- dependencies on raw Slurm ids: only the user's own jobs -------------------------------------


def depending(user: str, dependency: str) -> dict[str, Any]:
    return {**submit_job(user), "options": {"dependency": dependency}}


def test_a_dependency_on_another_users_slurm_job_fails_the_job_unsent(tmp_path: Path) -> None:
    # GIVEN bob's job 77 in slurmctld
    slurm = FakeSlurm(squeue="77|bob|hpcb:rbobs\n")
    # WHEN alice submits a job that waits for it (among her own job 78 would be fine)
    request = {"op": "submit", "jobs": [depending("alice", "afterok:78,afterany:77_3")]}
    (result,) = ask(slurm, request, tmp_path)["results"]
    # THEN DEPENDENCY_NOT_FOUND, permanent, naming the id; sbatch never ran
    assert (result["error"]["code"], result["error"]["transient"]) == (
        agent.DEPENDENCY_NOT_FOUND,
        False,
    )
    assert "77" in result["error"]["message"]
    assert slurm.commands("sbatch") == []


def test_a_dependency_on_the_users_own_slurm_job_is_submitted(tmp_path: Path) -> None:
    # GIVEN alice's job 77 in slurmctld, and an id slurmctld does not hold (Slurm judges that one)
    slurm = FakeSlurm(squeue="77|alice|hpcb:rolder\n")
    # WHEN alice submits a job that waits for both
    request = {"op": "submit", "jobs": [depending("alice", "afterok:77:90")]}
    (result,) = ask(slurm, request, tmp_path)["results"]
    # THEN it is submitted, as alice, with the dependency as given
    assert "error" not in result, result
    (sbatch,) = slurm.commands("sbatch")
    assert "--dependency=afterok:77:90" in sbatch


def test_jobs_without_dependencies_cost_no_owner_listing(tmp_path: Path) -> None:
    # GIVEN a job with no dependency / WHEN submitted
    slurm = FakeSlurm()
    ask(slurm, {"op": "submit", "jobs": [submit_job("alice")]}, tmp_path)
    # THEN the only squeue is the token search of alice's jobs (-u alice), no listing of all
    assert [argv for argv in slurm.commands("squeue") if "-u" not in argv] == []


@pytest.mark.parametrize(
    ("dependency", "ids"),
    [
        ("afterok:12", ["12"]),
        ("afterok:12:13_2,afterany:14", ["12", "13", "14"]),
        ("after:5_1:5_2", ["5"]),
    ],
)
def test_dependency_ids_are_the_base_ids_named(dependency: str, ids: list[str]) -> None:
    assert agent.dependency_job_ids(dependency) == ids
