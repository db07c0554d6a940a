"""The head-node agent's pure parts: sbatch argv and environment, output parsing, error
classification, token lookup, payload handling and answer staging. No Slurm, no network: effects
are injected. Ops status/cancel/output: test_agent_status.py and test_agent_output.py."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broker.agent import hpcb_agent as agent
from broker.agent.hpcb_agent import Agent, AgentError, SbatchCommand
from broker.runners.ssm import agent_b64

DEDUP = "hpcb:r0123456789abcdef"  # the job's de-duplication token
#: The job's user, in the fake passwd below (``PASSWD``).
USER = "alice"
SETPRIV_ALICE = ["setpriv", "--reuid=1001", "--regid=1001", "--init-groups", "--"]
SCRIPT = "#!/bin/bash\necho hello\n"
#: What every sbatch argv starts with.
PREFIX = ["sbatch", "--parsable", "--ignore-pbs", "--export=ALL", f"--comment={DEDUP}"]
#: The agent's own environment in these tests (what ``base_environment`` picks from).
AGENT_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "SLURM_CONF": "/etc/slurm/slurm.conf",
    "AWS_SECRET_ACCESS_KEY": "not-for-jobs",
    "SQUEUE_FORMAT": "%i",
}

# Recorded from Slurm 22.05.8 (scripts/slurm.sh) and from Slurm's own error strings.
STDERR_BAD_PARTITION = (
    "sbatch: error: invalid partition specified: nope\n"
    "sbatch: error: Batch job submission failed: Invalid partition name specified\n"
)
STDERR_NO_SHEBANG = (
    "sbatch: error: This does not look like a batch script.  The first\n"
    "sbatch: error: line must start with #! followed by the path to an interpreter.\n"
    "sbatch: error: For instance: #!/bin/sh\n"
)
STDERR_SOCKET_TIMEOUT = (
    "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation\n"
)
STDERR_NO_CONTROLLER = (
    "sbatch: error: Batch job submission failed: "
    "Unable to contact slurm controller (connect failure)\n"
)
STDERR_EAGAIN = "sbatch: error: Batch job submission failed: Resource temporarily unavailable\n"
STDERR_BUSY = "sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying\n"


def job(**options: Any) -> dict[str, Any]:
    return {"token": DEDUP, "script": SCRIPT, "options": options, "user": USER}


class Passwd:
    """A fake ``pwd.getpwnam`` (the users it names need not exist on this machine)."""

    def __init__(self, name: str, uid: int, gid: int, home: str) -> None:
        self.pw_name, self.pw_uid, self.pw_gid, self.pw_dir = name, uid, gid, home


PASSWD = {
    entry.pw_name: entry
    for entry in [
        Passwd("alice", 1001, 1001, "/home/alice"),
        Passwd("bob", 1002, 1002, "/home/bob"),
        Passwd("root", 0, 0, "/root"),
        Passwd("toor", 0, 1003, "/home/toor"),
        Passwd("wheel", 1004, 0, "/home/wheel"),
        Passwd("daemon", 1, 1, "/usr/sbin"),
        Passwd("svc", 999, 999, "/var/lib/svc"),
    ]
}


def getpwnam(name: str) -> Passwd:
    return PASSWD[name]


def unwrap(argv: list[str]) -> list[str]:
    """The Slurm client's own argv, without a ``setpriv ... --`` prefix."""
    return argv[argv.index("--") + 1 :] if argv[0] == "setpriv" else argv


def is_reader(argv: list[str]) -> bool:
    """Whether ``argv`` starts the output reader (``python3 -I -c READ_CODE ...``)."""
    return unwrap(argv)[:4] == ["python3", "-I", "-c", agent.READ_CODE]


def run_reader(argv: list[str], timeout: float, env: dict[str, str]) -> tuple[int, str, str]:
    """Run the output reader for real, as this process's user: the fake passwd's users do not
    exist here, so the setpriv prefix (checked by the tests that build it) is dropped."""
    return agent.run_process(unwrap(argv), None, timeout, env)


def b64(document: Any) -> str:
    return base64.b64encode(json.dumps(document).encode()).decode()


class FakeSlurm:
    """Records every argv; answers squeue/sacct/sbatch from canned outputs."""

    def __init__(
        self,
        squeue: str = "",
        sacct: tuple[int, str, str] = (0, "", ""),
        sbatch: Callable[[list[str], bytes], tuple[int, str, str]] | None = None,
    ) -> None:
        self.calls: list[tuple[list[str], bytes | None]] = []
        self.envs: list[dict[str, str]] = []
        self.squeue = squeue
        self.sacct = sacct
        self.next_id = 1000
        self.sbatch = sbatch or self._submit
        self._lock = threading.Lock()  # the agent runs sbatch from several threads

    def _submit(self, argv: list[str], script: bytes) -> tuple[int, str, str]:
        with self._lock:
            self.next_id += 1
            return 0, f"{self.next_id}\n", ""

    def __call__(
        self, argv: list[str], stdin: bytes | None, timeout: float, env: dict[str, str]
    ) -> tuple[int, str, str]:
        with self._lock:
            self.calls.append((argv, stdin))
            self.envs.append(env)
        argv = unwrap(argv)
        if argv[0] == "squeue":
            return 0, self.squeue, ""
        if argv[0] == "sacct":
            return self.sacct
        if argv[:2] == ["sbatch", "--version"]:
            return 0, "slurm-wlm 22.05.8\n", ""
        return self.sbatch(argv, stdin or b"")

    def commands(self, name: str) -> list[list[str]]:
        """The calls of one client (without their setpriv prefix)."""
        return [unwrap(argv) for argv, _ in self.calls if unwrap(argv)[0] == name]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_agent(tmp_path: Path, slurm: FakeSlurm, **kwargs: Any) -> Agent:
    return Agent(
        run=slurm,
        lock_path=str(tmp_path / "agent.lock"),
        lookup_user=getpwnam,
        environ=AGENT_ENV,
        **kwargs,
    )


def answer(tmp_path: Path, slurm: FakeSlurm, request: dict[str, Any], **kw: Any) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(make_agent(tmp_path, slurm, **kw).answer(b64(request)))
    return result


# ---- argv building ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "argument"),
    [
        ("name", "my-job_1.v2", "--job-name=my-job_1.v2"),
        ("partition", "compute", "--partition=compute"),
        ("account", "proj-42", "--account=proj-42"),
        ("qos", "normal", "--qos=normal"),
        ("time_limit", "1-02:03:04", "--time=1-02:03:04"),
        ("nodes", 2, "--nodes=2"),
        ("ntasks", 64, "--ntasks=64"),
        ("cpus_per_task", 4, "--cpus-per-task=4"),
        ("mem", "4G", "--mem=4G"),
        ("working_directory", "/shared/home/alice/run 1", "--chdir=/shared/home/alice/run 1"),
        ("output", "/shared/out/%x-%j.out", "--output=/shared/out/%x-%j.out"),
        ("error", "/shared/out/%A_%a.err", "--error=/shared/out/%A_%a.err"),
        ("array", "1-100%10", "--array=1-100%10"),
        ("array", "1,3,5-9:2", "--array=1,3,5-9:2"),
        (
            "dependency",
            "afterok:123:124_2,afterany:125",
            "--dependency=afterok:123:124_2,afterany:125",
        ),
        ("dependency", "afternotok:7", "--dependency=afternotok:7"),
        ("hold", 1, "--hold"),
    ],
)
def test_each_option_becomes_its_own_sbatch_argument(key: str, value: Any, argument: str) -> None:
    # GIVEN a job with one option
    command = SbatchCommand(job(**{key: value}))
    # WHEN building argv
    argv = command.argv()
    # THEN the option is exactly one argument after the fixed prefix
    assert argv == [*PREFIX, argument]


def test_all_options_keep_a_stable_order() -> None:
    # GIVEN every option at once, in scrambled order
    options = {
        "hold": 1,
        "mem": "1G",
        "dependency": "after:1",
        "nodes": 1,
        "array": "1-2",
        "name": "a",
        "working_directory": "/tmp",
        "qos": "q",
    }
    # WHEN building argv
    argv = SbatchCommand(job(**options)).argv()
    # THEN the arguments follow the fixed option table order
    assert argv[len(PREFIX) :] == [
        "--job-name=a",
        "--qos=q",
        "--nodes=1",
        "--mem=1G",
        "--chdir=/tmp",
        "--array=1-2",
        "--dependency=after:1",
        "--hold",
    ]


@pytest.mark.parametrize("value", [0, "0", None])
def test_hold_zero_or_absent_adds_no_argument(value: Any) -> None:
    # GIVEN hold switched off / WHEN building argv / THEN only the fixed prefix
    assert SbatchCommand(job(hold=value)).argv() == PREFIX


def test_export_all_is_always_passed() -> None:
    # GIVEN a job without environment (the job's environment is sbatch's either way)
    # WHEN building argv / THEN --export=ALL is there, explicitly
    assert "--export=ALL" in SbatchCommand(job()).argv()


# ---- the job's environment -------------------------------------------------------------------


def env_job(environment: dict[str, Any]) -> dict[str, Any]:
    return {"token": DEDUP, "script": SCRIPT, "environment": environment, "user": USER}


def test_environment_never_reaches_argv() -> None:
    # GIVEN variables whose values look like options and shell syntax
    command = SbatchCommand(env_job({"APP_MYVAR": "--uid=0", "APP_OTHER": "$(id); a,b=c\nx"}))
    # WHEN building the command
    argv = command.argv()
    # THEN no value and no name is in argv
    assert not any("--uid" in arg or "APP_MYVAR" in arg or "$(id)" in arg for arg in argv)


def test_sbatch_environment_is_the_clean_base_plus_the_job_variables() -> None:
    # GIVEN the agent's environment with secrets and a site squeue format, and a job variable
    command = SbatchCommand(env_job({"APP_MYVAR": "a b,c=d;$(id)\nline2"}))
    base = agent.base_environment(AGENT_ENV)
    # WHEN computing sbatch's environment
    env = command.env(base)
    # THEN it is exactly PATH/HOME/LANG/SLURM_CONF from the agent plus APP_MYVAR, verbatim
    assert env == {
        "PATH": "/usr/bin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "SLURM_CONF": "/etc/slurm/slurm.conf",
        "APP_MYVAR": "a b,c=d;$(id)\nline2",
    }


def test_base_environment_has_a_path_even_when_the_agent_has_none() -> None:
    # GIVEN an agent started with an empty environment / WHEN the base is built
    # THEN Slurm clients still get a standard PATH
    assert agent.base_environment({}) == {"PATH": agent.DEFAULT_PATH}


def test_submit_runs_sbatch_with_the_job_environment(tmp_path: Path) -> None:
    # GIVEN a job with a variable
    slurm = FakeSlurm()
    request = {"v": 1, "op": "submit", "jobs": [env_job({"APP_MYVAR": "42"})]}
    # WHEN submitted
    answer(tmp_path, slurm, request)
    # THEN sbatch ran with the clean base plus APP_MYVAR, and squeue without APP_MYVAR
    envs = {unwrap(argv)[0]: env for (argv, _), env in zip(slurm.calls, slurm.envs, strict=True)}
    assert envs["sbatch"]["APP_MYVAR"] == "42"
    assert "AWS_SECRET_ACCESS_KEY" not in envs["sbatch"]
    assert envs["squeue"] == agent.base_environment(AGENT_ENV)


@pytest.mark.parametrize(
    "environment",
    [
        {"LD_PRELOAD": "/tmp/evil.so"},
        {"SLURM_CONF": "/tmp/evil.conf"},
        {"SBATCH_EXPORT": "NONE"},
        {"BASH_FUNC_x%%": "() { id; }"},
        {"PATH": "/tmp"},
        {"IFS": " "},
        {"GLIBC_TUNABLES": "glibc.malloc.mxfast=1"},
        {"HOSTALIASES": "/tmp/hosts"},
        {"1BAD": "x"},
        {"BAD-NAME": "x"},
        {"APP_A": "nul\x00byte"},
        {"APP_A": "x" * 4097},
        {"APP_A": 5},
        {f"V{i}": "x" for i in range(129)},
    ],
)
def test_unacceptable_environment_is_rejected(environment: dict[str, Any]) -> None:
    # GIVEN a reserved, loader-relevant or malformed variable
    # WHEN the agent builds the command
    with pytest.raises(AgentError) as caught:
        SbatchCommand(env_job(environment))
    # THEN a permanent INVALID_OPTION
    assert caught.value.code == agent.INVALID_OPTION
    assert not caught.value.transient


def test_environment_must_be_an_object() -> None:
    # GIVEN a list instead of a mapping / WHEN building / THEN INVALID_OPTION
    with pytest.raises(AgentError) as caught:
        SbatchCommand(env_job(["A=1"]))  # type: ignore[arg-type]
    assert caught.value.code == agent.INVALID_OPTION


def test_script_travels_on_stdin_never_in_argv() -> None:
    # GIVEN a script full of shell syntax
    script = "#!/bin/bash\necho $(touch /tmp/pwned) '; rm -rf /' `id`\n"
    command = SbatchCommand({"token": DEDUP, "script": script, "options": {"name": "x"}})
    # WHEN building the command
    argv, stdin = command.argv(), command.stdin()
    # THEN the script is stdin data only
    assert stdin == script.encode()
    assert not any("touch" in arg or "rm -rf" in arg for arg in argv)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("name", "x; rm -rf /"),
        ("name", "$(id)"),
        ("partition", "$(id)"),
        ("partition", "compute\n--uid=0"),
        ("partition", "compute\n"),
        ("account", "-A"),
        ("qos", "a b"),
        ("time_limit", "1:00 --wrap=id"),
        ("mem", "4G;id"),
        ("working_directory", "/tmp/../etc"),
        ("working_directory", "relative/path"),
        ("nodes", 0),
        ("nodes", 10001),
        ("nodes", True),
        ("ntasks", "5; id"),
        ("cpus_per_task", 1.5),
        ("partition", 7),
        ("dependency", "afterok:1;id"),
        ("dependency", "afterok:1 afterok:2"),
        ("dependency", "afterok"),
        ("dependency", "afterok:"),
        ("dependency", "before:1"),
        ("dependency", "afterok:1?afterany:2"),
        ("dependency", "singleton"),
        ("dependency", "afterok:1\n"),
        ("array", "1-10x"),
        ("array", "a-b"),
        ("array", "1-10%"),
        ("array", "1," * 200 + "1"),
        ("output", "/tmp/../etc/passwd"),
        ("output", "/tmp/..//x"),
        ("output", "relative/out"),
        ("output", "/tmp/a\nb"),
        ("error", "/tmp/x\x00"),
        ("hold", 2),
        ("hold", "yes"),
        ("hold", True),
    ],
)
def test_malicious_or_malformed_option_is_rejected_by_the_agent(key: str, value: Any) -> None:
    # GIVEN a job whose option did not come through the API's validation
    # WHEN the agent builds the command
    with pytest.raises(AgentError) as caught:
        SbatchCommand(job(**{key: value}))
    # THEN it is a permanent INVALID_OPTION error
    assert caught.value.code == agent.INVALID_OPTION
    assert not caught.value.transient


def test_unknown_option_key_is_rejected() -> None:
    # GIVEN an option sbatch would accept but the agent does not know
    # WHEN building the command
    with pytest.raises(AgentError) as caught:
        SbatchCommand(job(wrap="id"))
    # THEN INVALID_OPTION names the key
    assert caught.value.code == agent.INVALID_OPTION
    assert "wrap" in caught.value.message


def test_integer_options_accept_digit_strings() -> None:
    # GIVEN integers sent as strings (the protocol allows str | int)
    # WHEN building argv / THEN they are normalized
    assert SbatchCommand(job(nodes="3")).argv()[-1] == "--nodes=3"


@pytest.mark.parametrize(
    "token", ["hpcb:UPPER", "hpcb:", "other:abc", "hpcb:abc;id", "hpcb:abc\n", None, 5]
)
def test_malformed_token_is_rejected(token: Any) -> None:
    # GIVEN a job with a bad token / WHEN building the command / THEN INVALID_JOB
    with pytest.raises(AgentError) as caught:
        SbatchCommand({"token": token, "script": SCRIPT})
    assert caught.value.code == agent.INVALID_JOB


@pytest.mark.parametrize("script", ["echo no shebang", "#!/bin/sh\n\x00", 42, "#!" + "x" * 70000])
def test_unacceptable_script_is_rejected(script: Any) -> None:
    # GIVEN a script without shebang, with NUL, not text, or too large
    # WHEN building the command / THEN INVALID_SCRIPT
    with pytest.raises(AgentError) as caught:
        SbatchCommand({"token": DEDUP, "script": script})
    assert caught.value.code == agent.INVALID_SCRIPT


# ---- sbatch output ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stdout", "job_id"),
    [("4242\n", "4242"), ("4242;cluster-a\n", "4242"), ("\n4242\n\n", "4242")],
)
def test_parsable_output_gives_the_job_id(stdout: str, job_id: str) -> None:
    # GIVEN sbatch --parsable output / WHEN parsed / THEN the job id, without the cluster
    assert SbatchCommand(job()).parse(0, stdout, "") == job_id


@pytest.mark.parametrize("stdout", ["", "Submitted batch job 12\n", "abc;def\n", "\u0663\n"])
def test_success_without_a_job_id_is_transient(stdout: str) -> None:
    # GIVEN sbatch exit 0 but no parsable id / WHEN parsed
    with pytest.raises(AgentError) as caught:
        SbatchCommand(job()).parse(0, stdout, "")
    # THEN transient: the job may exist; a retry finds it by token
    assert caught.value.code == agent.SBATCH_BAD_OUTPUT
    assert caught.value.transient


@pytest.mark.parametrize(
    "stderr",
    [STDERR_SOCKET_TIMEOUT, STDERR_NO_CONTROLLER, STDERR_EAGAIN, STDERR_BUSY],
)
def test_scheduler_unavailable_messages_are_transient(stderr: str) -> None:
    # GIVEN sbatch failing because the controller cannot take the job now
    # WHEN classified
    with pytest.raises(AgentError) as caught:
        SbatchCommand(job()).parse(1, "", stderr)
    # THEN transient SCHEDULER_UNAVAILABLE with sbatch's message
    assert caught.value.code == agent.SCHEDULER_UNAVAILABLE
    assert caught.value.transient
    assert caught.value.message.startswith("sbatch: error:")


def test_rejection_is_permanent_with_slurms_message() -> None:
    # GIVEN sbatch refusing a partition
    # WHEN classified
    with pytest.raises(AgentError) as caught:
        SbatchCommand(job(partition="nope")).parse(1, "", STDERR_BAD_PARTITION)
    # THEN permanent SCHEDULER_REJECTED carrying Slurm's words, lines joined
    assert caught.value.code == agent.SCHEDULER_REJECTED
    assert not caught.value.transient
    assert caught.value.message == (
        "sbatch: error: invalid partition specified: nope; "
        "sbatch: error: Batch job submission failed: Invalid partition name specified"
    )


def test_long_stderr_is_trimmed() -> None:
    # GIVEN a very long error output / WHEN classified / THEN the message is bounded
    error = agent.classify_sbatch_failure(1, STDERR_NO_SHEBANG * 100)
    assert len(error.message) <= agent.MAX_MESSAGE_CHARS
    assert error.message.endswith("...")


def test_empty_stderr_still_explains_the_failure() -> None:
    # GIVEN sbatch failing silently / WHEN classified / THEN the exit status is the message
    assert agent.classify_sbatch_failure(2, "").message == "sbatch exited with status 2"


# ---- finding existing tokens --------------------------------------------------------------------


def test_token_lines_map_tokens_to_base_job_ids() -> None:
    # GIVEN recorded squeue -o '%i|%u|%k' output with arrays, het jobs and no-comment jobs
    squeue = (
        "2|root|(null)\n"
        "504_[1-3]|root|hpcb:rarray\n"
        "505_7|root|hpcb:rtask\n"
        "506+0|root|hpcb:rhet\n"
        "507|root|hpcb:rplain\n"
    )
    # WHEN parsed
    found = agent.parse_token_lines(squeue, "root")
    # THEN each token maps to the base job id; (null) comments are ignored
    assert found == {
        "hpcb:rarray": "504",
        "hpcb:rtask": "505",
        "hpcb:rhet": "506",
        "hpcb:rplain": "507",
    }


def test_other_users_jobs_do_not_count() -> None:
    # GIVEN another user's job carrying one of our tokens
    squeue = "77|mallory|hpcb:rvictim\n78|root|hpcb:rmine\n"
    # WHEN parsed for the agent's user
    found = agent.parse_token_lines(squeue, "root")
    # THEN only our own job counts
    assert found == {"hpcb:rmine": "78"}


def test_comment_containing_a_pipe_is_not_a_token() -> None:
    # GIVEN comments with '|' (the comment is the last field, so it is split off intact)
    sacct = "10|root|hpcb:rabc|x\n11|root|free text | with pipes\n12|root|hpcb:rdef\n"
    # WHEN parsed
    found = agent.parse_token_lines(sacct, "root")
    # THEN only exact tokens count
    assert found == {"hpcb:rdef": "12"}


def test_duplicate_token_maps_to_the_first_job() -> None:
    # GIVEN one token on two jobs (e.g. submitted by hand)
    # WHEN parsed / THEN the lowest job id wins, deterministically
    assert agent.parse_token_lines("30|root|hpcb:rdup\n9|root|hpcb:rdup\n", "root") == {
        "hpcb:rdup": "9"
    }


def test_garbage_lines_are_skipped() -> None:
    # GIVEN lines that are not jobid|user|comment / WHEN parsed / THEN ignored
    assert agent.parse_token_lines("junk\n|root|hpcb:rx\nabc|root|hpcb:ry\n", None) == {}


# ---- submit flow (exactly once) -----------------------------------------------------------------


def test_submit_runs_one_squeue_and_one_sacct_for_many_jobs(tmp_path: Path) -> None:
    # GIVEN an empty Slurm and three jobs
    slurm = FakeSlurm()
    jobs = [{"token": f"hpcb:r{i}", "script": SCRIPT, "user": USER} for i in range(3)]
    # WHEN submitted in one call, one sbatch at a time
    result = answer(tmp_path, slurm, {"v": 1, "op": "submit", "jobs": jobs, "concurrency": 1})
    # THEN one squeue, one sacct, three sbatch, and three new job ids, in order
    assert len(slurm.commands("squeue")) == 1
    assert len(slurm.commands("sacct")) == 1
    assert len(slurm.commands("sbatch")) == 3
    assert [r["job_id"] for r in result["results"]] == ["1001", "1002", "1003"]
    assert result["info"] == {"dedup": "squeue+sacct"}


def test_token_already_in_squeue_is_reused_not_resubmitted(tmp_path: Path) -> None:
    # GIVEN a job with our token already pending
    slurm = FakeSlurm(squeue=f"77|{USER}|{DEDUP}\n")
    # WHEN the same job is submitted again
    result = answer(tmp_path, slurm, {"v": 1, "op": "submit", "jobs": [job()]})
    # THEN the existing job is answered with reused=true and sbatch is not called
    assert result["results"] == [{"token": DEDUP, "job_id": "77", "reused": True}]
    assert slurm.commands("sbatch") == []


def test_find_only_answers_the_jobs_found_and_submits_nothing(tmp_path: Path) -> None:
    # GIVEN one of two tokens already in Slurm (squeue)
    slurm = FakeSlurm(squeue=f"77|{USER}|{DEDUP}\n")
    other = {"token": "hpcb:rother", "script": SCRIPT, "user": USER}
    # WHEN both are looked up with find_only (a chunk whose retries ran out)
    result = answer(
        tmp_path, slurm, {"v": 1, "op": "submit", "jobs": [job(), other], "find_only": True}
    )
    # THEN the one in Slurm is answered with its id, the other NOT_SUBMITTED (permanent), and
    # sbatch is never called
    found, missing = result["results"]
    assert found == {"token": DEDUP, "job_id": "77", "reused": True}
    assert (missing["token"], missing["error"]["code"]) == ("hpcb:rother", "NOT_SUBMITTED")
    assert missing["error"]["transient"] is False
    assert slurm.commands("sbatch") == []


def test_token_only_in_sacct_is_reused(tmp_path: Path) -> None:
    # GIVEN a finished job that left squeue but is in accounting
    slurm = FakeSlurm(sacct=(0, f"55|{USER}|{DEDUP}\n", ""))
    # WHEN submitted again / THEN reused from sacct
    result = answer(tmp_path, slurm, {"v": 1, "op": "submit", "jobs": [job()]})
    assert result["results"][0] == {"token": DEDUP, "job_id": "55", "reused": True}


def test_failing_sacct_is_tolerated_and_reported(tmp_path: Path) -> None:
    # GIVEN a cluster without accounting
    slurm = FakeSlurm(sacct=(1, "", "sacct: error: Slurm accounting storage is disabled\n"))
    # WHEN submitting
    result = answer(tmp_path, slurm, {"v": 1, "op": "submit", "jobs": [job()]})
    # THEN the job is submitted, and the answer says only squeue was consulted
    assert result["results"][0]["job_id"] == "1001"
    assert result["info"]["dedup"].startswith("squeue (sacct failed")


def test_failing_squeue_fails_the_call_transiently(tmp_path: Path) -> None:
    # GIVEN a controller that squeue cannot reach
    slurm = FakeSlurm()
    slurm.squeue = ""

    def run(
        argv: list[str], stdin: bytes | None, timeout: float, env: dict[str, str]
    ) -> tuple[int, str, str]:
        if argv[0] == "squeue":
            return 1, "", "squeue: error: Unable to contact slurm controller\n"
        return slurm(argv, stdin, timeout, env)

    # WHEN submitting
    agent_ = Agent(run=run, lock_path=str(tmp_path / "l"), lookup_user=getpwnam)
    result = json.loads(agent_.answer(b64({"v": 1, "op": "submit", "jobs": [job()]})))
    # THEN nothing is submitted and the whole call is a transient error
    assert result["ok"] is False
    assert result["error"]["code"] == agent.SCHEDULER_UNAVAILABLE
    assert result["error"]["transient"] is True
    assert slurm.commands("sbatch") == []


def test_same_token_twice_in_one_call_submits_once(tmp_path: Path) -> None:
    # GIVEN a request listing the same job twice
    slurm = FakeSlurm()
    # WHEN submitted
    result = answer(tmp_path, slurm, {"v": 1, "op": "submit", "jobs": [job(), job()]})
    # THEN one sbatch; the second answer reuses the first job
    assert len(slurm.commands("sbatch")) == 1
    assert result["results"][1] == {"token": DEDUP, "job_id": "1001", "reused": True}


def test_invalid_job_fails_alone(tmp_path: Path) -> None:
    # GIVEN one good and one malicious job
    slurm = FakeSlurm()
    bad = {"token": "hpcb:rbad", "script": SCRIPT, "user": USER, "options": {"partition": "$(id)"}}
    # WHEN submitted together
    result = answer(tmp_path, slurm, {"v": 1, "op": "submit", "jobs": [job(), bad]})
    # THEN the good one gets a job id, the bad one a permanent per-job error
    assert result["ok"] is True
    assert result["results"][0]["job_id"] == "1001"
    assert result["results"][1]["token"] == bad["token"]
    assert result["results"][1]["error"]["code"] == agent.INVALID_OPTION
    assert len(slurm.commands("sbatch")) == 1


def test_unreachable_controller_stops_further_sbatch_calls(tmp_path: Path) -> None:
    # GIVEN sbatch timing out on the controller
    def sbatch(argv: list[str], script: bytes) -> tuple[int, str, str]:
        return 1, "", STDERR_SOCKET_TIMEOUT

    slurm = FakeSlurm(sbatch=sbatch)
    jobs = [{"token": f"hpcb:r{i}", "script": SCRIPT, "user": USER} for i in range(5)]
    # WHEN submitting five jobs, one at a time
    result = answer(tmp_path, slurm, {"v": 1, "op": "submit", "jobs": jobs, "concurrency": 1})
    # THEN only the first is attempted; all five are transient errors
    assert len(slurm.commands("sbatch")) == 1
    assert all(r["error"]["transient"] for r in result["results"])
    assert result["results"][4]["error"]["message"].startswith("not attempted:")


class SlowSbatch:
    """sbatch taking 20 ms, recording how many run at once."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.running = 0
        self.peak = 0
        self.started = 0
        self.fail_after = fail_after
        self._lock = threading.Lock()

    def __call__(self, argv: list[str], script: bytes) -> tuple[int, str, str]:
        with self._lock:
            self.running += 1
            self.started += 1
            self.peak = max(self.peak, self.running)
            number = self.started
        time.sleep(0.02)
        with self._lock:
            self.running -= 1
        if self.fail_after is not None and number > self.fail_after:
            return 1, "", STDERR_SOCKET_TIMEOUT
        return 0, f"{5000 + number}\n", ""


@pytest.mark.parametrize("concurrency", [1, 3, 8])
def test_sbatch_runs_at_most_concurrency_at_once(tmp_path: Path, concurrency: int) -> None:
    # GIVEN 24 jobs and a slow sbatch
    sbatch = SlowSbatch()
    jobs = [{"token": f"hpcb:r{i}", "script": SCRIPT, "user": USER} for i in range(24)]
    # WHEN submitted with a concurrency
    request = {"v": 1, "op": "submit", "jobs": jobs, "concurrency": concurrency}
    result = answer(tmp_path, FakeSlurm(sbatch=sbatch), request)
    # THEN never more than that many sbatch at once, and (above 1) more than one did run together
    assert sbatch.peak <= concurrency
    assert sbatch.peak > 1 or concurrency == 1
    # AND every job has its own id, answered in the order of the request
    ids = [r["job_id"] for r in result["results"]]
    assert len(set(ids)) == 24
    assert [r["token"] for r in result["results"]] == [j["token"] for j in jobs]


def test_without_concurrency_the_agent_uses_its_default(tmp_path: Path) -> None:
    # GIVEN a request without concurrency / WHEN submitted / THEN at most the default at once
    sbatch = SlowSbatch()
    jobs = [{"token": f"hpcb:r{i}", "script": SCRIPT, "user": USER} for i in range(12)]
    answer(tmp_path, FakeSlurm(sbatch=sbatch), {"v": 1, "op": "submit", "jobs": jobs})
    assert 1 < sbatch.peak <= agent.DEFAULT_SUBMIT_CONCURRENCY


def test_concurrent_submission_stops_starting_sbatch_once_the_controller_fails(
    tmp_path: Path,
) -> None:
    # GIVEN a controller that times out from the 5th sbatch on
    sbatch = SlowSbatch(fail_after=4)
    jobs = [{"token": f"hpcb:r{i}", "script": SCRIPT, "user": USER} for i in range(40)]
    # WHEN 40 jobs are submitted 4 at a time
    request = {"v": 1, "op": "submit", "jobs": jobs, "concurrency": 4}
    result = answer(tmp_path, FakeSlurm(sbatch=sbatch), request)
    # THEN at most the ones already in flight follow the first failure (<= 4 + 4 started)
    assert sbatch.started <= 8
    # AND every job without an id is a transient error, to be retried by the worker
    without = [r for r in result["results"] if "job_id" not in r]
    assert len(without) >= 32
    assert all(r["error"]["transient"] for r in without)


@pytest.mark.parametrize("concurrency", [0, 17, "4", True, 2.5])
def test_unacceptable_concurrency_is_a_bad_request(tmp_path: Path, concurrency: Any) -> None:
    # GIVEN / WHEN a submit with a concurrency outside 1..16 / THEN BAD_REQUEST, nothing run
    slurm = FakeSlurm()
    request = {"v": 1, "op": "submit", "jobs": [job()], "concurrency": concurrency}
    result = answer(tmp_path, slurm, request)
    assert result["ok"] is False
    assert result["error"]["code"] == agent.BAD_REQUEST
    assert slurm.commands("sbatch") == []


def test_sbatch_timeout_is_transient(tmp_path: Path) -> None:
    # GIVEN sbatch hanging
    def sbatch(argv: list[str], script: bytes) -> tuple[int, str, str]:
        raise subprocess.TimeoutExpired(argv, 30)

    # WHEN submitting / THEN transient SCHEDULER_UNAVAILABLE
    result = answer(tmp_path, FakeSlurm(sbatch=sbatch), {"v": 1, "op": "submit", "jobs": [job()]})
    assert result["results"][0]["error"]["code"] == agent.SCHEDULER_UNAVAILABLE
    assert result["results"][0]["error"]["transient"] is True


def test_missing_sbatch_is_permanent_slurm_not_found(tmp_path: Path) -> None:
    # GIVEN a machine without sbatch
    def sbatch(argv: list[str], script: bytes) -> tuple[int, str, str]:
        raise FileNotFoundError(2, "not found", "sbatch")

    # WHEN submitting / THEN permanent SLURM_NOT_FOUND
    result = answer(tmp_path, FakeSlurm(sbatch=sbatch), {"v": 1, "op": "submit", "jobs": [job()]})
    assert result["results"][0]["error"] == {
        "code": agent.SLURM_NOT_FOUND,
        "message": "sbatch is not installed or not on PATH",
        "transient": False,
    }


def test_lock_held_elsewhere_makes_the_call_busy(tmp_path: Path) -> None:
    # GIVEN another agent call holding the lock
    lock_path = str(tmp_path / "agent.lock")
    slurm = FakeSlurm()
    busy = Agent(run=slurm, lock_path=lock_path, lock_wait=0.1, lookup_user=getpwnam)
    with agent.FileLock(lock_path):
        # WHEN this call cannot get the lock in time
        result = json.loads(busy.answer(b64({"v": 1, "op": "submit", "jobs": [job()]})))
    # THEN it gives up with a transient AGENT_BUSY, having run nothing
    assert result["error"]["code"] == agent.AGENT_BUSY
    assert result["error"]["transient"] is True
    assert slurm.calls == []


def test_lock_is_released_after_a_call(tmp_path: Path) -> None:
    # GIVEN a finished submit call
    lock_path = str(tmp_path / "agent.lock")
    Agent(run=FakeSlurm(), lock_path=lock_path, lookup_user=getpwnam).answer(
        b64({"v": 1, "op": "submit", "jobs": [job()]})
    )
    # WHEN another call takes the lock / THEN it gets it at once
    with agent.FileLock(lock_path, wait_seconds=0):
        pass


REPO_ROOT = Path(__file__).resolve().parents[2]
ORPHAN = """
import os, sys, threading
from broker.agent import hpcb_agent as agent
with agent.FileLock(sys.argv[1]):
    env = {"PATH": os.environ["PATH"]}
    client = threading.Thread(target=agent.run_process, args=(["sleep", "1.5"], None, 10, env))
    client.start()
    print("client started", flush=True)
    client.join()
"""


def test_a_client_in_flight_keeps_the_lock_after_its_agent_is_killed(tmp_path: Path) -> None:
    # GIVEN an agent holding the lock with a Slurm client (here: sleep 1.5) in flight
    lock_path = str(tmp_path / "agent.lock")
    parent = subprocess.Popen(
        [sys.executable, "-c", ORPHAN, lock_path], stdout=subprocess.PIPE, cwd=REPO_ROOT
    )
    assert parent.stdout is not None
    assert parent.stdout.readline() == b"client started\n"
    time.sleep(0.2)
    # WHEN the agent is killed (a runner timeout, a cancelled SSM command)
    parent.kill()
    parent.wait()
    # THEN the next agent cannot take the lock while the orphaned client runs
    with pytest.raises(agent.AgentError) as busy, agent.FileLock(lock_path, wait_seconds=0):
        pass
    assert busy.value.code == agent.AGENT_BUSY
    # AND gets it once the client has exited
    with agent.FileLock(lock_path, wait_seconds=10):
        pass


# ---- payloads and ops ---------------------------------------------------------------------------


@pytest.mark.parametrize("payload", ["not base64!", base64.b64encode(b"not json").decode(), "W10="])
def test_undecodable_payload_gets_a_json_error_answer(tmp_path: Path, payload: str) -> None:
    # GIVEN a payload that is not base64 JSON of an object
    # WHEN answered
    result = json.loads(make_agent(tmp_path, FakeSlurm()).answer(payload))
    # THEN a permanent BAD_PAYLOAD answer, not a crash
    assert result["ok"] is False
    assert result["error"]["code"] == agent.BAD_PAYLOAD
    assert result["error"]["transient"] is False


def test_unknown_op_is_a_bad_request(tmp_path: Path) -> None:
    # GIVEN an unknown op / WHEN answered / THEN BAD_REQUEST
    result = answer(tmp_path, FakeSlurm(), {"v": 1, "op": "rm"})
    assert result["error"]["code"] == agent.BAD_REQUEST


def test_other_protocol_version_is_refused(tmp_path: Path) -> None:
    # GIVEN a request from a newer worker / WHEN answered / THEN UNSUPPORTED_VERSION
    result = answer(tmp_path, FakeSlurm(), {"v": 2, "op": "ping"})
    assert result["error"]["code"] == agent.UNSUPPORTED_VERSION


def test_ping_reports_versions_and_host(tmp_path: Path) -> None:
    # GIVEN a working sbatch / WHEN pinged
    result = answer(tmp_path, FakeSlurm(), {"v": 1, "op": "ping"})
    # THEN ok, with agent, python and sbatch versions and the hostname
    assert result["ok"] is True
    assert result["info"]["sbatch"] == "slurm-wlm 22.05.8"
    assert result["info"]["agent_version"] == agent.AGENT_VERSION
    assert set(result["info"]) == {"agent_version", "python", "sbatch", "hostname"}


def test_fetch_downloads_and_processes_the_real_request(tmp_path: Path) -> None:
    # GIVEN a staged submit request behind a URL
    staged = {"v": 1, "op": "submit", "jobs": [job()]}
    fetched: list[str] = []

    def get(url: str) -> bytes:
        fetched.append(url)
        return json.dumps(staged).encode()

    slurm = FakeSlurm()
    # WHEN the agent receives a fetch (the staged bytes' sha256 in the command)
    request = {"v": 1, "op": "fetch", "payload_url": "https://bucket.s3/payloads/x?sig=1",
               "payload_sha256": sha256(json.dumps(staged).encode())}  # fmt: skip
    result = answer(tmp_path, slurm, request, get=get)
    # THEN it downloads the request and answers it as a submit
    assert fetched == ["https://bucket.s3/payloads/x?sig=1"]
    assert result["op"] == "submit"
    assert result["results"][0]["job_id"] == "1001"


def test_fetch_of_a_fetch_is_refused(tmp_path: Path) -> None:
    # GIVEN a staged request that is itself a fetch
    inner = json.dumps({"v": 1, "op": "fetch", "payload_url": "https://x/y"}).encode()

    def get(url: str) -> bytes:
        return inner

    # WHEN fetched / THEN BAD_REQUEST, no second download loop
    request = {"v": 1, "op": "fetch", "payload_url": "https://x", "payload_sha256": sha256(inner)}
    result = answer(tmp_path, FakeSlurm(), request, get=get)
    assert result["error"]["code"] == agent.BAD_REQUEST


@pytest.mark.parametrize(
    "url", ["file:///etc/shadow", "ftp://x/y", None, 5, "http://bucket.s3/x", "http://10.0.0.1/x"]
)
def test_fetch_accepts_only_https_urls(tmp_path: Path, url: Any) -> None:
    # GIVEN a payload URL with another scheme, or plain http to another machine
    def get(url: str) -> bytes:
        raise AssertionError("must not download")

    # WHEN fetched / THEN refused without download
    request = {"v": 1, "op": "fetch", "payload_url": url, "payload_sha256": "0" * 64}
    result = answer(tmp_path, FakeSlurm(), request, get=get)
    assert result["error"]["code"] == agent.BAD_REQUEST


def test_a_staged_request_that_does_not_match_its_sha256_is_not_run(tmp_path: Path) -> None:
    # GIVEN the command's sha256 of the staged request, and an object changed since
    staged = json.dumps({"v": 1, "op": "submit", "jobs": [job()]}).encode()
    changed = staged + b" "  # still valid JSON, not the bytes the worker staged
    slurm = FakeSlurm()
    request = {
        "v": 1,
        "op": "fetch",
        "payload_url": "https://x/p",
        "payload_sha256": sha256(staged),
    }
    # WHEN fetched / THEN BAD_PAYLOAD, permanent, and no Slurm command ran
    result = answer(tmp_path, slurm, request, get=lambda url: changed)
    assert (result["error"]["code"], result["error"]["transient"]) == (agent.BAD_PAYLOAD, False)
    assert slurm.calls == []


@pytest.mark.parametrize("digest", [None, "", "ABC", "0" * 63, "g" * 64])
def test_a_fetch_without_a_sha256_is_refused_undownloaded(tmp_path: Path, digest: Any) -> None:
    def get(url: str) -> bytes:
        raise AssertionError("must not download")

    request = {"v": 1, "op": "fetch", "payload_url": "https://x/p", "payload_sha256": digest}
    assert answer(tmp_path, FakeSlurm(), request, get=get)["error"]["code"] == agent.BAD_REQUEST


def test_plain_http_is_allowed_to_this_machine_only(tmp_path: Path) -> None:
    # GIVEN the local stack's moto on loopback / WHEN fetched / THEN downloaded
    staged = json.dumps({"v": 1, "op": "ping"}).encode()
    request = {"v": 1, "op": "fetch", "payload_url": "http://127.0.0.1:5000/b/p",
               "payload_sha256": sha256(staged)}  # fmt: skip
    assert answer(tmp_path, FakeSlurm(), request, get=lambda url: staged)["op"] == "ping"


def test_failed_download_is_transient(tmp_path: Path) -> None:
    # GIVEN an expired presigned URL
    def get(url: str) -> bytes:
        raise OSError("HTTP Error 403: Forbidden")

    # WHEN fetched / THEN a transient FETCH_FAILED (the worker re-stages on retry)
    request = {"v": 1, "op": "fetch", "payload_url": "https://x", "payload_sha256": "0" * 64}
    result = answer(tmp_path, FakeSlurm(), request, get=get)
    assert result["error"]["code"] == agent.FETCH_FAILED
    assert result["error"]["transient"] is True


# ---- large answers ------------------------------------------------------------------------------


class FakePut:
    def __init__(self, error: Exception | None = None) -> None:
        self.uploads: list[tuple[str, bytes]] = []
        self.error = error

    def __call__(self, url: str, body: bytes) -> None:
        if self.error:
            raise self.error
        self.uploads.append((url, body))


def many_jobs(count: int) -> list[dict[str, Any]]:
    return [{"token": f"hpcb:r{i:08d}", "script": SCRIPT, "user": USER} for i in range(count)]


def test_large_answer_is_put_and_a_staged_marker_printed(tmp_path: Path) -> None:
    # GIVEN a request whose answer exceeds inline_limit, with a result URL
    put = FakePut()
    request = {
        "v": 1,
        "op": "submit",
        "jobs": many_jobs(20),
        "result_put_url": "https://bucket.s3/results/r1?sig=2",
        "inline_limit": 500,
    }
    # WHEN answered
    line = make_agent(tmp_path, FakeSlurm(), put=put).answer(b64(request))
    # THEN the full answer went to the URL and stdout has only the marker
    assert json.loads(line) == {"v": 1, "ok": True, "op": "submit", "staged": True}
    ((url, body),) = put.uploads
    assert url == "https://bucket.s3/results/r1?sig=2"
    assert len(json.loads(body)["results"]) == 20


def test_small_answer_stays_inline(tmp_path: Path) -> None:
    # GIVEN a result URL but a small answer / WHEN answered / THEN nothing is uploaded
    put = FakePut()
    request = {"v": 1, "op": "submit", "jobs": [job()], "result_put_url": "https://x/y"}
    result = json.loads(make_agent(tmp_path, FakeSlurm(), put=put).answer(b64(request)))
    assert result["results"][0]["job_id"] == "1001"
    assert put.uploads == []


def test_large_answer_without_url_stays_inline(tmp_path: Path) -> None:
    # GIVEN no result URL (local runner) / WHEN the answer is large / THEN printed inline
    request = {"v": 1, "op": "submit", "jobs": many_jobs(20), "inline_limit": 100}
    result = answer(tmp_path, FakeSlurm(), request)
    assert len(result["results"]) == 20


def test_failed_upload_is_a_transient_error(tmp_path: Path) -> None:
    # GIVEN an upload that fails
    put = FakePut(error=OSError("connection reset"))
    request = {
        "v": 1,
        "op": "submit",
        "jobs": many_jobs(20),
        "result_put_url": "https://x/y",
        "inline_limit": 100,
    }
    # WHEN answered
    result = json.loads(make_agent(tmp_path, FakeSlurm(), put=put).answer(b64(request)))
    # THEN transient: the jobs exist, a retry finds them by token
    assert result["error"]["code"] == agent.RESULT_UPLOAD_FAILED
    assert result["error"]["transient"] is True


def test_fetched_request_stages_with_its_own_result_url(tmp_path: Path) -> None:
    # GIVEN a staged request carrying the result URL and a small inline limit
    staged = {
        "v": 1,
        "op": "submit",
        "jobs": many_jobs(10),
        "result_put_url": "https://x/inner",
        "inline_limit": 100,
    }
    put = FakePut()
    # WHEN the agent fetches and answers it
    body = json.dumps(staged).encode()
    fetching = make_agent(tmp_path, FakeSlurm(), put=put, get=lambda url: body)
    request = {"v": 1, "op": "fetch", "payload_url": "https://x/p", "payload_sha256": sha256(body)}
    result = json.loads(fetching.answer(b64(request)))
    # THEN the answer goes to the inner request's URL
    assert result == {"v": 1, "ok": True, "op": "submit", "staged": True}
    assert put.uploads[0][0] == "https://x/inner"


# ---- the script entry point ---------------------------------------------------------------------


def test_main_prints_one_json_line_and_exits_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN an undecodable payload on the command line
    # WHEN the script runs
    code = agent.main(["%%%"])
    # THEN exit 0 with exactly one JSON line
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("\n") == 1
    assert json.loads(out)["error"]["code"] == agent.BAD_PAYLOAD


def test_main_without_payload_answers_usage(capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN no argument / WHEN run / THEN a JSON error answer, exit 0
    assert agent.main([]) == 0
    assert json.loads(capsys.readouterr().out)["error"]["code"] == agent.BAD_PAYLOAD


def test_crash_still_prints_a_transient_json_answer(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN an unexpected exception inside the agent
    def boom(self: Agent, payload: str) -> str:
        raise RuntimeError("boom")

    monkeypatch.setattr(Agent, "answer", boom)
    # WHEN run
    code = agent.main([b64({"v": 1, "op": "ping"})])
    # THEN a non-zero exit, and a transient AGENT_CRASHED answer on stdout
    assert code != 0
    assert json.loads(capsys.readouterr().out)["error"] == {
        "code": agent.AGENT_CRASHED,
        "message": "RuntimeError: boom",
        "transient": True,
    }


# ---- what the head node runs --------------------------------------------------------------------

PYTHON37 = Path.home() / ".pyenv/versions/3.7.16/bin/python"


@pytest.mark.skipif(not PYTHON37.exists(), reason="Python 3.7 is not installed (pyenv)")
def test_agent_runs_under_python_37_without_slurm(tmp_path: Path) -> None:
    # GIVEN Python 3.7 (Amazon Linux 2's python3), no Slurm on PATH, and an output request for
    # a user this machine does not have
    query = {"job_id": "77", "user": "nosuchuser", "token": DEDUP}
    payload = b64({"v": 1, "op": "output", "output": query})
    # WHEN the agent script runs there
    completed = subprocess.run(
        [str(PYTHON37), str(Path(agent.__file__)), payload],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": str(tmp_path / "empty")},
        timeout=30,
    )
    # THEN one JSON answer refusing the user (decoded, validated, looked up: no crash)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["error"]["code"] == agent.USER_REFUSED


@pytest.mark.skipif(not PYTHON37.exists(), reason="Python 3.7 is not installed (pyenv)")
def test_output_reader_runs_under_python_37(tmp_path: Path) -> None:
    # GIVEN a job's output file and the reader program run by Python 3.7
    (tmp_path / "slurm-77.out").write_text("héllo\n")

    def python37(
        argv: list[str], stdin: bytes | None, timeout: float, env: dict[str, str]
    ) -> tuple[int, str, str]:
        assert argv[0] == "python3"
        return agent.run_process([str(PYTHON37), *argv[1:]], stdin, timeout, env)

    # WHEN its tail is read / THEN the file's text
    chunk = agent.read_chunk(str(tmp_path / "slurm-77.out"), None, 100, run=python37)
    assert (chunk["data"], chunk["eof"]) == ("héllo\n", True)


def test_compressed_agent_leaves_room_in_an_ssm_command() -> None:
    # GIVEN the agent as the SSM runner embeds it (without docstrings and comments, zlib, base64)
    # in a 32 KiB inline command
    embedded = agent_b64()
    # WHEN measured / THEN it leaves at least 6 KiB for the payload (larger ones go through S3)
    assert len(embedded) < 26 * 1024


LAZY_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[2])
import hpcb_agent
hpcb_agent.main([sys.argv[1]])
print(json.dumps(sorted(m for m in hpcb_agent.LAZY_IMPORTS if m in sys.modules)))
"""


@pytest.mark.parametrize(
    ("request_", "loaded"),
    [
        ({"v": 1, "op": "ping"}, []),
        ({"v": 1, "op": "status", "job_ids": ["1"]}, []),
        (
            {
                "v": 1,
                "op": "fetch",
                "payload_url": "http://127.0.0.1:9/x",
                "payload_sha256": "0" * 64,
            },
            ["http.client", "urllib.request"],
        ),
    ],
)
def test_the_agent_imports_network_and_thread_modules_only_when_used(
    tmp_path: Path, request_: dict[str, Any], loaded: list[str]
) -> None:
    # GIVEN a fresh interpreter running the agent on one request (no Slurm on PATH needed)
    env = {"PATH": str(tmp_path), "HPCB_AGENT_LOCK": str(tmp_path / "lock")}
    agent_dir = str(REPO_ROOT / "broker" / "agent")
    # WHEN it answers
    run = subprocess.run(
        [sys.executable, "-S", "-c", LAZY_PROBE, b64(request_), agent_dir],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    # THEN it answered, and loaded only the modules that request needed
    answer, modules = run.stdout.strip().splitlines()
    assert json.loads(answer)["v"] == 1
    assert json.loads(modules) == loaded


def test_sacct_reads_only_the_lookback_the_request_gives(tmp_path: Path) -> None:
    # GIVEN a submit saying its jobs were accepted at most 900 s ago
    slurm = FakeSlurm()
    request = {"v": 1, "op": "submit", "jobs": [job()], "lookback_seconds": 900}
    # WHEN answered / THEN sacct searches the last 900 s of accounting, not a week
    answer(tmp_path, slurm, request)
    (sacct,) = slurm.commands("sacct")
    assert sacct[-2:] == ["-S", "now-900seconds"]


def test_without_a_lookback_sacct_reads_a_week(tmp_path: Path) -> None:
    slurm = FakeSlurm()
    answer(tmp_path, slurm, {"v": 1, "op": "submit", "jobs": [job()]})
    (sacct,) = slurm.commands("sacct")
    assert sacct[-2:] == ["-S", "now-7days"]


@pytest.mark.parametrize("lookback", [59, 90 * 86400 + 1, "900", True, 1.5])
def test_unacceptable_lookback_is_a_bad_request(tmp_path: Path, lookback: Any) -> None:
    slurm = FakeSlurm()
    request = {"v": 1, "op": "submit", "jobs": [job()], "lookback_seconds": lookback}
    result = answer(tmp_path, slurm, request)
    assert result["error"]["code"] == agent.BAD_REQUEST
    assert slurm.calls == []
