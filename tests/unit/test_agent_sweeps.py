"""The agent's sweeps: one job with per-position task variables becomes one ``sbatch --array``
per MaxArraySize positions, each array under its own token, its task files written as the user.

Slurm here is a fake (``FakeSlurm``) that records argv; tests/integration/test_sweep_slurm.py
runs the same on the real Slurm.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from broker.agent import hpcb_agent as agent
from tests.unit.test_agent import USER, FakeSlurm, answer, unwrap

TOKEN = "hpcb:r0123456789abcdef0123456789abc0"  # noqa: S105 - a Slurm comment token
CONFIG = "ClusterName = x\nMaxArraySize            = 4\nMaxJobCount             = 10000\n"


class SweepSlurm(FakeSlurm):
    """FakeSlurm that also answers ``scontrol show config`` and the task-file writer."""

    def __init__(self, config: str = CONFIG, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.staged: list[dict[str, Any]] = []

    def __call__(
        self, argv: list[str], stdin: bytes | None, timeout: float, env: dict[str, str]
    ) -> tuple[int, str, str]:
        inner = unwrap(argv)
        if inner[:3] == ["scontrol", "show", "config"]:
            self.calls.append((argv, stdin))
            self.envs.append(env)
            return 0, self.config, ""
        if inner[:3] == ["python3", "-I", "-c"] and inner[3] == agent.WRITE_CODE:
            self.calls.append((argv, stdin))
            self.envs.append(env)
            self.staged.append({"argv": argv, "doc": json.loads(stdin or b"{}")})
            return 0, "", ""
        return super().__call__(argv, stdin, timeout, env)


def sweep(tasks: list[Any], **extra: Any) -> dict[str, Any]:
    return {"token": TOKEN, "script": "#!/bin/bash\necho $PARAM_I\n", "user": USER,
            "options": {"working_directory": "/tmp"}, "tasks": tasks, **extra}  # fmt: skip


def submit(tmp_path: Path, slurm: FakeSlurm, *jobs: dict[str, Any]) -> dict[str, Any]:
    return answer(tmp_path, slurm, {"op": "submit", "jobs": list(jobs)})


def test_a_sweep_is_one_array_per_max_array_size_positions(tmp_path: Path) -> None:
    # GIVEN 10 positions, position 5 without a task, and MaxArraySize 4
    tasks: list[Any] = [{"PARAM_I": str(i)} for i in range(10)]
    tasks[5] = None
    slurm = SweepSlurm()
    # WHEN submitted
    result = submit(tmp_path, slurm, sweep(tasks))["results"][0]
    # THEN three arrays: positions 0-3, 4-7 (no task at 5: task 1), 8-9, each its own token
    sbatch = slurm.commands("sbatch")
    # (the agent runs sbatch calls concurrently: in any order)
    assert sorted(
        [a for a in argv if a.startswith(("--array", "--comment"))] for argv in sbatch
    ) == [
        ["--comment=" + TOKEN + "a0", "--array=0-3"],
        ["--comment=" + TOKEN + "a1", "--array=0,2-3"],
        ["--comment=" + TOKEN + "a2", "--array=0-1"],
    ]
    # AND the answer says where each array's positions start and how many it holds
    assert [(a["first"], a["tasks"]) for a in result["arrays"]] == [(0, 4), (4, 4), (8, 2)]
    assert "error" not in result


def test_each_array_runs_the_constant_wrapper_with_its_first_position(tmp_path: Path) -> None:
    # GIVEN a sweep of 6 positions (MaxArraySize 4) for a user whose home is /home/alice
    slurm = SweepSlurm()
    submit(tmp_path, slurm, sweep([{"PARAM_I": str(i)} for i in range(6)]))
    # WHEN its arrays are submitted / THEN each script is the wrapper, never the user's text
    scripts = [stdin for argv, stdin in slurm.calls if unwrap(argv)[0] == "sbatch"]
    directory = "/home/alice/.hpcb/arrays/" + TOKEN.replace(":", "-")
    assert sorted(scripts) == [
        (agent.ARRAY_WRAPPER % ("'" + directory + "'", first)).encode() for first in (0, 4)
    ]
    assert all(b"PARAM_I" not in script and b"echo" not in script for script in scripts)


def test_task_files_are_written_as_the_user_before_any_sbatch(tmp_path: Path) -> None:
    # GIVEN a sweep whose values hold shell text
    tasks: list[Any] = [{"PARAM_I": "$(rm -rf ~)"}, None, {"PARAM_I": "a'b", "app_x": "1"}]
    slurm = SweepSlurm()
    # WHEN submitted
    submit(tmp_path, slurm, sweep(tasks, environment={"APP_COMMON": "c"}))
    # THEN one writer ran, as the user (setpriv), before the first sbatch
    (staged,) = slurm.staged
    assert staged["argv"][:3] == ["setpriv", "--reuid=1001", "--regid=1001"]
    names = [unwrap(argv)[0] for argv, _ in slurm.calls]
    assert names.index("python3") < names.index("sbatch")
    # AND each task's file holds NAME=value records ending in NUL, sorted, values as given
    assert staged["doc"]["tasks"] == {"0": "PARAM_I=$(rm -rf ~)\0", "2": "PARAM_I=a'b\0app_x=1\0"}
    assert staged["doc"]["script"] == "#!/bin/bash\necho $PARAM_I\n"
    # AND the common variables go through sbatch's environment, as for any job
    (env,) = [e for (argv, _), e in zip(slurm.calls, slurm.envs, strict=True)
              if unwrap(argv)[0] == "sbatch"]  # fmt: skip
    assert env["APP_COMMON"] == "c"


def test_a_redelivery_finds_each_array_and_submits_only_the_missing_one(tmp_path: Path) -> None:
    # GIVEN arrays a0 and a2 of the sweep already in Slurm (a1 was never submitted)
    squeue = f"77_[0-3]|{USER}|{TOKEN}a0\n79_1|{USER}|{TOKEN}a2\n"
    slurm = SweepSlurm(squeue=squeue)
    # WHEN the same sweep is submitted again
    result = submit(tmp_path, slurm, sweep([{"PARAM_I": str(i)} for i in range(10)]))
    # THEN only a1 is submitted, and the answer lists all three
    assert [a for argv in slurm.commands("sbatch") for a in argv if a.startswith("--comment")] == [
        f"--comment={TOKEN}a1"
    ]
    assert [(a["job_id"], a["first"]) for a in result["results"][0]["arrays"]] == [
        ("77", 0), ("1001", 4), ("79", 8),
    ]  # fmt: skip


def test_another_users_array_with_the_token_is_not_taken_for_it(tmp_path: Path) -> None:
    # GIVEN bob's job carrying the sweep's first array token
    slurm = SweepSlurm(squeue=f"55_0|bob|{TOKEN}a0\n")
    # WHEN alice's sweep is submitted / THEN all of its arrays are submitted
    submit(tmp_path, slurm, sweep([{"PARAM_I": "1"}] * 5))
    assert len(slurm.commands("sbatch")) == 2


@pytest.mark.parametrize(
    ("config", "code", "transient"),
    [
        ("MaxArraySize = 0\n", agent.ARRAYS_DISABLED, False),
        ("nothing here\n", agent.SCHEDULER_UNAVAILABLE, True),
    ],
)
def test_max_array_size_is_read_never_assumed(
    tmp_path: Path, config: str, code: str, transient: bool
) -> None:
    # GIVEN a controller whose MaxArraySize is 0, or that does not say
    slurm = SweepSlurm(config=config)
    # WHEN a sweep and a plain job are submitted together
    results = submit(tmp_path, slurm, sweep([{"PARAM_I": "1"}]), {
        "token": "hpcb:plain1", "script": "#!/bin/sh\ntrue\n", "user": USER,
    })["results"]  # fmt: skip
    # THEN the sweep fails with that reason, nothing of it submitted; the plain job goes on
    assert results[0]["error"]["code"] == code
    assert results[0]["error"]["transient"] is transient
    assert [a for argv in slurm.commands("sbatch") for a in argv if a.startswith("--comment")] == [
        "--comment=hpcb:plain1"
    ]


@pytest.mark.parametrize(
    ("job", "message"),
    [
        (sweep([]), "tasks must be a list"),
        (sweep([None, None]), "at least one task"),
        (sweep("x"), "tasks must be a list"),
        (sweep([{"PATH": "/evil"}]), "PATH"),
        (sweep([{"LD_PRELOAD": "/x.so"}]), "LD_PRELOAD"),
        (sweep([{"PARAM_I": 1}]), "must be text"),
        (sweep([{"PARAM_I": "1"}], options={"array": "0-3"}), "array"),
        (sweep([{"PARAM_I": "x"}] * (agent.MAX_ARRAY_TASKS + 1)), "tasks must be a list"),
    ],
)
def test_unacceptable_sweeps_are_refused_before_any_slurm_call(
    tmp_path: Path, job: dict[str, Any], message: str
) -> None:
    slurm = SweepSlurm()
    (result,) = submit(tmp_path, slurm, job)["results"]
    assert result["error"]["code"] in (agent.INVALID_JOB, agent.INVALID_OPTION)
    assert message in result["error"]["message"]
    assert slurm.calls == []


@pytest.mark.parametrize(
    ("ids", "spec"),
    [([0], "0"), ([0, 1, 2, 5], "0-2,5"), ([3, 5, 6, 7, 9], "3,5-7,9"), ([1000], "1000")],
)
def test_array_ranges(ids: list[int], spec: str) -> None:
    assert agent.array_ranges(ids) == spec


@pytest.mark.parametrize(
    ("comment", "token", "matches"),
    [
        ("hpcb:r" + "0" * 28, "hpcb:r" + "0" * 28, True),
        (TOKEN + "a0", TOKEN, True),
        (TOKEN + "a12", TOKEN, True),
        (TOKEN + "a", TOKEN, False),
        (TOKEN + "ax", TOKEN, False),
        (TOKEN + "a1x", TOKEN, False),
        ("hpcb:r" + "0" * 28 + "a0", "hpcb:r" + "0" * 28, False),  # not a sweep chunk's token
        (TOKEN + "1a0", TOKEN, False),  # another chunk (c01)
    ],
)
def test_token_matches_a_sweep_chunk_only_through_its_own_arrays(
    comment: str, token: str, matches: bool
) -> None:
    assert agent.token_matches(comment, token) is matches


def test_the_wrapper_exports_each_value_exactly_without_evaluating_it(tmp_path: Path) -> None:
    # GIVEN task files written by the real writer (as this user), values full of shell syntax
    directory = tmp_path / "arrays" / "hpcb-x"
    tasks = {"0": "PARAM_A=$(touch pwned)\0PARAM_B=a b\nc'\"\0", "1": "PARAM_A=second\0"}
    writer = ["python3", "-I", "-c", agent.WRITE_CODE, str(directory), "30"]
    script = '#!/bin/bash\nprintf "%s|%s" "$PARAM_A" "$PARAM_B"\n'
    subprocess.run(writer, input=json.dumps({"script": script, "tasks": tasks}).encode(),
                   check=True)  # fmt: skip
    wrapper = tmp_path / "wrapper.sh"
    wrapper.write_text(agent.ARRAY_WRAPPER % (agent._quote(str(directory)), 0))
    # WHEN task 0 runs in its own directory
    env = {"SLURM_ARRAY_TASK_ID": "0", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(["bash", str(wrapper)], env=env, capture_output=True, text=True,
                          cwd=tmp_path, check=True)  # fmt: skip
    # THEN the values arrive exactly, and nothing in them ran
    assert done.stdout == "$(touch pwned)|a b\nc'\""
    assert not (tmp_path / "pwned").exists()
    # AND the files are the user's alone
    assert oct((directory / "0.env").stat().st_mode & 0o777) == "0o600"
    assert oct((directory / "script").stat().st_mode & 0o777) == "0o700"
    assert oct(directory.stat().st_mode & 0o777) == "0o700"


def test_a_task_without_its_file_fails_instead_of_running_without_its_variables(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "empty"
    directory.mkdir()
    (directory / "script").write_text("#!/bin/sh\necho ran\n")
    (directory / "script").chmod(0o700)
    wrapper = tmp_path / "wrapper.sh"
    wrapper.write_text(agent.ARRAY_WRAPPER % (agent._quote(str(directory)), 0))
    done = subprocess.run(["bash", str(wrapper)], env={"SLURM_ARRAY_TASK_ID": "3"},
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert (done.returncode, done.stdout) == (97, "")


def test_a_look_up_finds_a_sweeps_arrays_and_writes_or_submits_nothing(tmp_path: Path) -> None:
    # GIVEN array a0 of a sweep in Slurm, a1 not
    slurm = SweepSlurm(squeue=f"77_[0-3]|{USER}|{TOKEN}a0\n")
    # WHEN looked up (find_only, the dead-letter path)
    request = {"op": "submit", "jobs": [sweep([{"PARAM_I": str(i)} for i in range(6)])],
               "find_only": True}  # fmt: skip
    (result,) = answer(tmp_path, slurm, request)["results"]
    # THEN a0 is answered, a1 is NOT_SUBMITTED; no task file written, no sbatch
    assert [(a["job_id"], a["first"], a["tasks"]) for a in result["arrays"]] == [("77", 0, 4)]
    assert result["error"]["code"] == agent.NOT_SUBMITTED
    assert (slurm.staged, slurm.commands("sbatch")) == ([], [])
