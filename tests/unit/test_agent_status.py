"""The agent's ops ``status`` and ``cancel``: parsing of squeue/sacct/scancel outputs recorded from
the real Slurm 22.05 (tests/unit/recorded, see its README), merging, and the op flow against a fake
runner. No Slurm, no network."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from broker.agent import hpcb_agent as agent
from broker.agent.hpcb_agent import Agent
from broker.agent.protocol import AgentResponse
from tests.unit.test_agent import SETPRIV_ALICE, USER, getpwnam, unwrap

RECORDED = Path(__file__).parent / "recorded"


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


def by_id(statuses: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {status["job_id"]: status for status in statuses}


class FakeSlurm:
    """Answers each Slurm client from a canned (returncode, stdout, stderr); records argv."""

    def __init__(self, **answers: tuple[int, str, str]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(
        self, argv: list[str], stdin: bytes | None, timeout: float, env: dict[str, str]
    ) -> tuple[int, str, str]:
        self.calls.append(argv)
        name = unwrap(argv)[0]
        if name not in self.answers:
            raise FileNotFoundError(2, "not found", name)
        return self.answers[name]

    def commands(self, name: str) -> list[list[str]]:
        """The calls of one client (without their setpriv prefix)."""
        return [unwrap(argv) for argv in self.calls if unwrap(argv)[0] == name]


def ask(slurm: FakeSlurm, request: dict[str, Any]) -> dict[str, Any]:
    payload = base64.b64encode(json.dumps({"v": 1, **request}).encode()).decode()
    subject = Agent(run=slurm, lock_path="/nonexistent/lock", lookup_user=getpwnam, environ={})
    answer = subject.answer(payload)
    result: dict[str, Any] = json.loads(answer)
    return result


SQUEUE_OK = (0, recorded("squeue_status.txt"), "")
SACCT_OK = (0, recorded("sacct_status.txt"), "")


# ---- parsing squeue ------------------------------------------------------------------------------


def test_squeue_failed_job_has_exit_code_from_the_raw_wait_status() -> None:
    # GIVEN recorded squeue output with job 1325 (exit 3: raw status 768)
    # WHEN parsed
    status = by_id(agent.parse_squeue_status(recorded("squeue_status.txt")))["1325"]
    # THEN FAILED with exit code 3, no signal, and squeue's times and reason
    assert status == {
        "job_id": "1325",
        "base_id": "1325",
        "state": "FAILED",
        "reason": "NonZeroExitCode",
        "exit_code": 3,
        "signal": 0,
        "submit_time": "2026-11-21T15:57:50",
        "start_time": "2026-11-21T15:57:51",
        "end_time": "2026-11-21T15:57:51",
        "source": "squeue",
    }


@pytest.mark.parametrize(
    ("job_id", "state", "exit_code", "signal"),
    [
        ("1324", "COMPLETED", 0, 0),
        ("1327", "CANCELLED", 0, 15),
        ("1331", "TIMEOUT", 0, 15),
        ("1338", "FAILED", 0, 9),
        ("1326", "RUNNING", None, None),
        ("1335", "PENDING", None, None),
    ],
)
def test_squeue_states_and_exit_codes(
    job_id: str, state: str, exit_code: int | None, signal: int | None
) -> None:
    # GIVEN recorded squeue output (completed, cancelled, timed out, killed, running, pending)
    # WHEN parsed
    status = by_id(agent.parse_squeue_status(recorded("squeue_status.txt")))[job_id]
    # THEN the state word as Slurm says it, and an exit code/signal only once the job has ended
    assert (status["state"], status.get("exit_code"), status.get("signal")) == (
        state,
        exit_code,
        signal,
    )


def test_squeue_no_value_times_are_left_out() -> None:
    # GIVEN a running job without time limit (end NONE) and a pending one (start N/A)
    statuses = by_id(agent.parse_squeue_status(recorded("squeue_status.txt")))
    # WHEN parsed / THEN those times are absent, not "NONE" or "N/A"
    assert "end_time" not in statuses["1326"]
    assert "start_time" not in statuses["1335"]
    assert statuses["1335"]["reason"] == "Dependency"
    assert "reason" not in statuses["1326"]  # squeue says "None"


def test_squeue_array_tasks_come_one_per_line_with_their_own_outcome() -> None:
    # GIVEN the array 1329 (tasks 2 and 4 exit 1) in squeue -r output
    statuses = by_id(agent.parse_squeue_status(recorded("squeue_status.txt")))
    # WHEN parsed / THEN one status per task, each with its base id, index and outcome
    tasks = {f"1329_{index}": statuses[f"1329_{index}"] for index in range(1, 5)}
    assert [
        (s["base_id"], s["array_task"], s["state"], s["exit_code"]) for s in tasks.values()
    ] == [
        ("1329", "1", "COMPLETED", 0),
        ("1329", "2", "FAILED", 1),
        ("1329", "3", "COMPLETED", 0),
        ("1329", "4", "FAILED", 1),
    ]


def test_squeue_expands_a_pending_array_per_task() -> None:
    # GIVEN the held array 1330 (5-10 without the cancelled 7) in squeue -r output
    statuses = by_id(agent.parse_squeue_status(recorded("squeue_status.txt")))
    # WHEN parsed / THEN one PENDING status per remaining task
    assert sorted(k for k in statuses if k.startswith("1330_")) == [
        "1330_10",
        "1330_5",
        "1330_6",
        "1330_8",
        "1330_9",
    ]
    assert statuses["1330_5"]["reason"] == "JobHeldUser"


def test_squeue_pending_range_is_one_status_with_a_bracketed_task() -> None:
    # GIVEN squeue output without -r: the pending array on one line
    # WHEN parsed
    (status,) = agent.parse_squeue_status(recorded("squeue_status_pending_range.txt"))
    # THEN one status whose task is the range, bracketed as Slurm prints it in job ids
    assert status["job_id"] == "1330_[5-6,8-10]"
    assert status["array_task"] == "[5-6,8-10]"
    assert status["state"] == "PENDING"


def test_squeue_reason_containing_a_pipe_stays_whole() -> None:
    # GIVEN a line whose last field (the reason) contains '|'
    line = "7|7|N/A|PENDING|0|2026-11-21T15:57:50|N/A|N/A|a|b|\n"
    # WHEN parsed / THEN the reason keeps its '|', without the field suffix
    assert agent.parse_squeue_status(line)[0]["reason"] == "a|b"


@pytest.mark.parametrize(
    "line",
    [
        "",
        "garbage",
        "x|x|N/A|RUNNING|0|a|b|c|d|",
        "7|7|a-b|PENDING|0|a|b|c|d|",
        "7|7|N/A|RUNNING|0|",
    ],
)
def test_squeue_junk_lines_are_skipped(line: str) -> None:
    # GIVEN a line that is not a status line / WHEN parsed / THEN nothing
    assert agent.parse_squeue_status(line) == []


# ---- parsing sacct ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job_id", "state", "exit_code", "signal"),
    [
        ("1324", "COMPLETED", 0, 0),
        ("1325", "FAILED", 3, 0),
        ("1327", "CANCELLED", 0, 0),  # "CANCELLED by 0"; sacct says 0:0 where squeue says 15
        ("1331", "TIMEOUT", 0, 0),
        ("1338", "FAILED", 0, 9),
        ("1329_2", "FAILED", 1, 0),
        ("1329_3", "COMPLETED", 0, 0),
        ("1326", "RUNNING", None, None),
        ("1335", "PENDING", None, None),
    ],
)
def test_sacct_states_and_exit_codes(
    job_id: str, state: str, exit_code: int | None, signal: int | None
) -> None:
    # GIVEN recorded sacct -P output
    # WHEN parsed
    status = by_id(agent.parse_sacct_status(recorded("sacct_status.txt")))[job_id]
    # THEN the first word of the state, and exit:signal split, only for ended jobs
    assert (status["state"], status.get("exit_code"), status.get("signal")) == (
        state,
        exit_code,
        signal,
    )
    assert status["source"] == "sacct"


def test_sacct_array_task_and_pending_range() -> None:
    # GIVEN recorded sacct output with array tasks and a pending range
    statuses = by_id(agent.parse_sacct_status(recorded("sacct_status.txt")))
    # WHEN parsed / THEN tasks carry base and index; the range stays one bracketed status
    assert statuses["1329_4"]["base_id"] == "1329"
    assert statuses["1329_4"]["array_task"] == "4"
    assert statuses["1330_[5-6,8-10]"]["array_task"] == "[5-6,8-10]"


def test_sacct_never_started_job_has_no_start_time() -> None:
    # GIVEN the job cancelled while held (sacct prints Start=None)
    status = by_id(agent.parse_sacct_status(recorded("sacct_status.txt")))["1328"]
    # WHEN parsed / THEN no start time, and the end time is kept
    assert "start_time" not in status
    assert status["end_time"] == "2026-11-21T15:59:10"


def test_sacct_requeued_job_keeps_its_last_record() -> None:
    # GIVEN sacct -D output listing a requeued job twice (REQUEUED, then RUNNING)
    # WHEN parsed
    statuses = agent.parse_sacct_status(recorded("sacct_status_requeued_duplicates.txt"))
    # THEN one status: the last record
    assert [(s["job_id"], s["state"]) for s in statuses] == [("1339", "RUNNING")]


@pytest.mark.parametrize(
    "line",
    [
        "1324.batch|COMPLETED|0:0|a|b|c|None",
        "1324+0|COMPLETED|0:0|a|b|c|None",
        "1324|COMPLETED|0:0",
        "abc|COMPLETED|0:0|a|b|c|None",
    ],
)
def test_sacct_steps_het_components_and_junk_are_skipped(line: str) -> None:
    # GIVEN a line that is not a job or array task / WHEN parsed / THEN nothing
    assert agent.parse_sacct_status(line) == []


@pytest.mark.parametrize(
    ("text", "state"),
    [
        ("CANCELLED by 0", "CANCELLED"),
        ("CANCELLED+", "CANCELLED"),
        ("running", "RUNNING"),
        ("  OUT_OF_MEMORY ", "OUT_OF_MEMORY"),
        ("NODE_FAIL", "NODE_FAIL"),
        ("", "UNKNOWN"),
    ],
)
def test_state_words_are_normalized(text: str, state: str) -> None:
    # GIVEN a Slurm state text / WHEN normalized / THEN its first word, upper case
    assert agent.normalize_state(text) == state


# ---- merging ------------------------------------------------------------------------------------


def status(job_id: str, state: str, source: str, **extra: Any) -> dict[str, Any]:
    base, _, task = job_id.partition("_")
    found = {"job_id": job_id, "base_id": base, "state": state, "source": source, **extra}
    if task:
        found["array_task"] = task.strip("[]") if "-" not in task else task
    return found


def test_squeue_wins_over_a_lagging_sacct() -> None:
    # GIVEN squeue saying FAILED (exit 5) while sacct still says PENDING (it lags 2-4 s)
    live = [status("1343", "FAILED", "squeue", exit_code=5, signal=0)]
    accounted = [status("1343", "PENDING", "sacct")]
    # WHEN merged / THEN squeue's record
    statuses, missing = agent.merge_statuses(["1343"], live, accounted)
    assert statuses == live
    assert missing == []


def test_sacct_adds_array_tasks_squeue_no_longer_lists() -> None:
    # GIVEN an array whose task 1 left squeue (MinJobAge) while task 2 still runs
    live = [status("50_2", "RUNNING", "squeue")]
    accounted = [status("50_1", "COMPLETED", "sacct"), status("50_2", "PENDING", "sacct")]
    # WHEN merged
    statuses, _ = agent.merge_statuses(["50"], live, accounted)
    # THEN task 1 from sacct, task 2 from squeue
    assert [(s["job_id"], s["source"]) for s in statuses] == [
        ("50_1", "sacct"),
        ("50_2", "squeue"),
    ]


def test_sacct_pending_range_of_an_array_in_squeue_is_dropped() -> None:
    # GIVEN squeue listing pending tasks one by one, sacct the same tasks as a range
    live = [status("60_5", "PENDING", "squeue"), status("60_6", "PENDING", "squeue")]
    accounted = [status("60_[5-6]", "PENDING", "sacct")]
    # WHEN merged / THEN only the tasks
    statuses, _ = agent.merge_statuses(["60"], live, accounted)
    assert [s["job_id"] for s in statuses] == ["60_5", "60_6"]


def test_unknown_ids_are_missing_and_tasks_can_be_asked_alone() -> None:
    # GIVEN an array in squeue, and requests for one of its tasks, an unknown task, an unknown job
    live = [status("70_1", "COMPLETED", "squeue"), status("70_2", "RUNNING", "squeue")]
    # WHEN merged
    statuses, missing = agent.merge_statuses(["70_2", "70_9", "71"], live, [])
    # THEN only the asked task, and both unknown ids as missing, in request order
    assert [s["job_id"] for s in statuses] == ["70_2"]
    assert missing == ["70_9", "71"]


def test_statuses_are_ordered_by_job_then_task_number() -> None:
    # GIVEN statuses in squeue's order (by state) / WHEN merged
    live = [status(i, "COMPLETED", "squeue") for i in ["9_10", "10", "9_2", "9_[11-12]"]]
    statuses, _ = agent.merge_statuses(["9", "10"], live, [])
    # THEN numeric order: job, then task (ranges first)
    assert [s["job_id"] for s in statuses] == ["9_[11-12]", "9_2", "9_10", "10"]


# ---- op status ----------------------------------------------------------------------------------


def test_status_of_jobs_squeue_lists_needs_no_sacct() -> None:
    # GIVEN plain jobs squeue still lists
    slurm = FakeSlurm(squeue=SQUEUE_OK, sacct=SACCT_OK)
    # WHEN asked for their status
    result = ask(slurm, {"op": "status", "job_ids": ["1325", "1326", "1331"]})
    # THEN one squeue call (no -j filter, -r, the fixed format), no sacct, statuses from squeue
    assert slurm.calls == [agent.SQUEUE_STATUS_ARGV]
    assert [(s["job_id"], s["state"]) for s in result["statuses"]] == [
        ("1325", "FAILED"),
        ("1326", "RUNNING"),
        ("1331", "TIMEOUT"),
    ]
    assert "accounting" not in result


def test_status_asks_sacct_once_for_missing_jobs_and_arrays() -> None:
    # GIVEN squeue knowing 1325 (plain) and 1329 (array) but not 1318 or 999999
    slurm = FakeSlurm(squeue=SQUEUE_OK, sacct=(0, "1318|COMPLETED|0:0|a|b|c|None\n", ""))
    # WHEN asked for all of them
    result = ask(slurm, {"op": "status", "job_ids": ["999999", "1325", "1329", "1318"]})
    # THEN one sacct for the array and the jobs squeue does not list, comma-separated
    assert slurm.commands("sacct") == [[*agent.SACCT_STATUS_ARGV, "-j", "1318,1329,999999"]]
    assert result["accounting"] is True
    assert result["missing"] == ["999999"]
    assert {s["job_id"]: s["source"] for s in result["statuses"]} == {
        "1318": "sacct",
        "1325": "squeue",
        "1329_1": "squeue",
        "1329_2": "squeue",
        "1329_3": "squeue",
        "1329_4": "squeue",
    }


def test_status_of_a_finished_array_from_accounting() -> None:
    # GIVEN an array that left squeue (recorded sacct output)
    slurm = FakeSlurm(squeue=(0, "", ""), sacct=SACCT_OK)
    # WHEN asked
    result = ask(slurm, {"op": "status", "job_ids": ["1329"]})
    # THEN each task with its own outcome, from sacct
    assert [(s["job_id"], s["state"], s["exit_code"]) for s in result["statuses"]] == [
        ("1329_1", "COMPLETED", 0),
        ("1329_2", "FAILED", 1),
        ("1329_3", "COMPLETED", 0),
        ("1329_4", "FAILED", 1),
    ]


def test_status_without_accounting_reports_it_and_keeps_squeue_answers() -> None:
    # GIVEN a cluster without slurmdbd (recorded sacct stderr)
    slurm = FakeSlurm(squeue=SQUEUE_OK, sacct=(1, "", recorded("sacct_disabled.stderr")))
    # WHEN asked about a listed job and one that left squeue
    result = ask(slurm, {"op": "status", "job_ids": ["1325", "1200"]})
    # THEN squeue's answer, the other missing, accounting false with sacct's words
    assert [s["job_id"] for s in result["statuses"]] == ["1325"]
    assert result["missing"] == ["1200"]
    assert result["accounting"] is False
    assert result["info"] == {"sacct": "Slurm accounting storage is disabled"}


def test_status_with_unreachable_slurmdbd_is_not_an_error() -> None:
    # GIVEN slurmdbd down (recorded sacct stderr)
    slurm = FakeSlurm(squeue=SQUEUE_OK, sacct=(1, "", recorded("sacct_unreachable.stderr")))
    # WHEN asked / THEN an answer with accounting false, sacct's words kept
    result = ask(slurm, {"op": "status", "job_ids": ["1200"]})
    assert result["ok"] is True
    assert result["accounting"] is False
    assert "Connection refused" in result["info"]["sacct"]


def test_status_without_sacct_installed_is_not_an_error() -> None:
    # GIVEN a cluster without the sacct command / WHEN asked
    result = ask(FakeSlurm(squeue=SQUEUE_OK), {"op": "status", "job_ids": ["1200"]})
    # THEN accounting false, the job missing
    assert (result["accounting"], result["missing"]) == (False, ["1200"])


def test_status_with_unreachable_controller_is_transient() -> None:
    # GIVEN squeue unable to reach slurmctld (recorded stderr)
    slurm = FakeSlurm(squeue=(1, "", recorded("squeue_unreachable.stderr")), sacct=SACCT_OK)
    # WHEN asked
    result = ask(slurm, {"op": "status", "job_ids": ["1325"]})
    # THEN a transient SCHEDULER_UNAVAILABLE for the whole call, with squeue's words
    assert result["ok"] is False
    assert result["error"] == {
        "code": agent.SCHEDULER_UNAVAILABLE,
        "message": "slurm_load_jobs error: Unable to contact slurm controller (connect failure)",
        "transient": True,
    }


def test_status_with_no_ids_runs_nothing() -> None:
    # GIVEN an empty request / WHEN asked / THEN an empty answer without any Slurm call
    slurm = FakeSlurm()
    result = ask(slurm, {"op": "status", "job_ids": []})
    assert (result["statuses"], result["missing"], slurm.calls) == ([], [], [])


@pytest.mark.parametrize(
    "job_ids", [["12;id"], ["12", "-1"], [12], ["12_"], ["1_2_3"], "12", ["1"] * 5001]
)
def test_status_refuses_malformed_ids(job_ids: Any) -> None:
    # GIVEN ids that are not Slurm ids (or too many) / WHEN asked
    slurm = FakeSlurm(squeue=SQUEUE_OK)
    result = ask(slurm, {"op": "status", "job_ids": job_ids})
    # THEN a permanent BAD_REQUEST, and no Slurm call
    assert result["error"]["code"] == agent.BAD_REQUEST
    assert slurm.calls == []


def test_status_answer_validates_against_the_protocol() -> None:
    # GIVEN every recorded job / WHEN asked
    ids = ["1324", "1325", "1326", "1327", "1328", "1329", "1330", "1331", "1335", "1338", "1339"]
    result = ask(FakeSlurm(squeue=SQUEUE_OK, sacct=SACCT_OK), {"op": "status", "job_ids": ids})
    # THEN the worker's model accepts it
    response = AgentResponse.model_validate(result)
    assert len(response.statuses) == 18
    assert response.accounting is True


def test_status_of_a_thousand_jobs_stays_compact() -> None:
    # GIVEN 1000 finished jobs in squeue
    times = "2026-11-21T15:57:50|2026-11-21T15:57:51|2026-11-21T15:57:51"
    line = "{0}|{0}|N/A|FAILED|768|" + times + "|NonZeroExitCode|\n"
    squeue = "".join(line.format(100000 + i) for i in range(1000))
    ids = [str(100000 + i) for i in range(1000)]
    # WHEN asked
    payload = base64.b64encode(json.dumps({"v": 1, "op": "status", "job_ids": ids}).encode())
    answer = Agent(run=FakeSlurm(squeue=(0, squeue, "")), environ={}).answer(payload.decode())
    # THEN all of them, in under 250 KB
    assert len(json.loads(answer)["statuses"]) == 1000
    assert len(answer) < 250_000


# ---- op cancel ----------------------------------------------------------------------------------


def token_of(job_id: str) -> str:
    """The broker token of a test job (its base id in it)."""
    return "hpcb:j" + job_id.partition("_")[0]


def targets(*job_ids: str, user: str = USER) -> list[dict[str, str]]:
    """Cancel targets: each job as ``user``'s, with its token."""
    return [{"job_id": job_id, "user": user, "token": token_of(job_id)} for job_id in job_ids]


def owners(*job_ids: str, user: str = USER) -> tuple[int, str, str]:
    """squeue's ``%i|%u|%k`` answer: those jobs are ``user``'s, with their tokens."""
    return 0, "".join(f"{job_id}|{user}|{token_of(job_id)}\n" for job_id in job_ids), ""


def test_cancel_is_one_scancel_with_every_id() -> None:
    # GIVEN three jobs, one named twice
    slurm = FakeSlurm(
        scancel=(0, "", "scancel: Terminating job 5\n"), squeue=owners("5", "6_2", "7")
    )
    # WHEN cancelled
    result = ask(slurm, {"op": "cancel", "targets": targets("5", "6_2", "7", "5")})
    # THEN one squeue (whose jobs), one verbose scancel as the user with each id once as its
    # own argument, all ok
    assert slurm.calls == [agent.SQUEUE_ARGV, [*SETPRIV_ALICE, "scancel", "-v", "5", "6_2", "7"]]
    assert result["cancelled"] == [
        {"job_id": "5", "ok": True},
        {"job_id": "6_2", "ok": True},
        {"job_id": "7", "ok": True},
    ]


def test_cancel_of_finished_and_unknown_jobs_is_a_permanent_per_job_error() -> None:
    # GIVEN scancel's recorded complaints (it exits 0 for them)
    slurm = FakeSlurm(
        scancel=(0, "", recorded("scancel_finished_and_unknown.stderr")),
        squeue=owners("1324", "1326"),
    )
    # WHEN cancelling them and one more
    result = ask(slurm, {"op": "cancel", "targets": targets("1324", "999999", "1326")})
    # THEN finished and unknown are told apart, both permanent; the other one is ok
    finished, unknown, other = result["cancelled"]
    assert finished["error"] == {
        "code": agent.JOB_ALREADY_FINISHED,
        "message": "scancel: error: Kill job error on job id 1324: "
        "Job/step already completing or completed",
        "transient": False,
    }
    assert (unknown["ok"], unknown["error"]["code"]) == (False, agent.JOB_NOT_FOUND)
    assert not unknown["error"]["transient"]
    assert other == {"job_id": "1326", "ok": True}


def test_cancel_with_unreachable_controller_is_transient() -> None:
    # GIVEN scancel unable to reach slurmctld (recorded, exit 8)
    slurm = FakeSlurm(
        scancel=(8, "", recorded("scancel_unreachable.stderr")), squeue=owners("1326")
    )
    # WHEN cancelling
    (result,) = ask(slurm, {"op": "cancel", "targets": targets("1326")})["cancelled"]
    # THEN a transient SCHEDULER_UNAVAILABLE for that job
    assert result["ok"] is False
    assert result["error"]["code"] == agent.SCHEDULER_UNAVAILABLE
    assert result["error"]["transient"] is True


def test_cancel_failure_without_per_job_lines_applies_to_every_job() -> None:
    # GIVEN scancel failing as a whole (an authentication error)
    stderr = "scancel: error: Munge encode failed: Failed to access socket\n"
    slurm = FakeSlurm(scancel=(1, "", stderr), squeue=owners("1", "2"))
    # WHEN cancelling two jobs
    result = ask(slurm, {"op": "cancel", "targets": targets("1", "2")})
    # THEN both carry that (transient) error
    assert [r["error"]["code"] for r in result["cancelled"]] == [agent.SCHEDULER_UNAVAILABLE] * 2


def test_cancel_refuses_malformed_ids_before_running_anything() -> None:
    # GIVEN an id with an option in it / WHEN cancelling / THEN BAD_REQUEST, no scancel
    slurm = FakeSlurm(scancel=(0, "", ""))
    result = ask(slurm, {"op": "cancel", "targets": targets("5", "--user=alice")})
    assert result["error"]["code"] == agent.BAD_REQUEST
    assert slurm.calls == []


def test_cancel_without_scancel_is_slurm_not_found() -> None:
    # GIVEN no scancel installed / WHEN cancelling / THEN the whole call fails permanently
    result = ask(FakeSlurm(), {"op": "cancel", "targets": targets("5")})
    assert result["error"]["code"] == agent.SLURM_NOT_FOUND


def test_cancel_answer_validates_against_the_protocol() -> None:
    # GIVEN a cancel answer with errors / WHEN the worker decodes it / THEN it validates
    slurm = FakeSlurm(
        scancel=(0, "", recorded("scancel_finished_and_unknown.stderr")), squeue=owners("1324")
    )
    response = AgentResponse.model_validate(
        ask(slurm, {"op": "cancel", "targets": targets("1324", "999999")})
    )
    assert [r.ok for r in response.cancelled] == [False, False]


def test_status_goes_through_fetch_and_large_answer_staging() -> None:
    # GIVEN a staged status request whose answer is larger than the inline limit
    staged = {
        "v": 1,
        "op": "status",
        "job_ids": ["1329", "1330"],
        "result_put_url": "https://bucket/results/x",
        "inline_limit": 100,
    }
    uploads: list[bytes] = []
    subject = Agent(
        run=FakeSlurm(squeue=SQUEUE_OK, sacct=SACCT_OK),
        get=lambda url: json.dumps(staged).encode(),
        put=lambda url, body: uploads.append(body),
        environ={},
    )
    # WHEN the agent fetches and answers it
    fetch = {
        "v": 1,
        "op": "fetch",
        "payload_url": "https://bucket/payloads/x",
        "payload_sha256": hashlib.sha256(json.dumps(staged).encode()).hexdigest(),
    }
    line = subject.answer(base64.b64encode(json.dumps(fetch).encode()).decode())
    # THEN the marker is printed and the full status answer uploaded
    assert json.loads(line) == {"v": 1, "ok": True, "op": "status", "staged": True}
    assert len(json.loads(uploads[0])["statuses"]) == 9
