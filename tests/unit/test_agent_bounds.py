"""The agent's input is bounded: every integer a request carries is checked before anything runs,
and one out of range is a permanent error that names the field, never a crash (a crash answers
AGENT_CRASHED, transient, so the worker would retry a request that can never succeed).
Real temp files; Slurm is faked (its clients are never reached)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from broker.agent import hpcb_agent as agent
from broker.agent.hpcb_agent import Agent
from tests.unit.test_agent import getpwnam, is_reader, run_reader


class NoSlurm:
    """A runner that records argv and answers as if no Slurm client were installed (fake); the
    output reader runs for real."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(
        self, argv: list[str], stdin: bytes | None, timeout: float, env: dict[str, str]
    ) -> tuple[int, str, str]:
        if is_reader(argv):
            return run_reader(argv, timeout, env)
        self.calls.append(argv)
        raise FileNotFoundError(2, "not found", argv[0])


def encode(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def ask(tmp_path: Path, request: dict[str, Any], slurm: NoSlurm | None = None) -> dict[str, Any]:
    subject = Agent(
        run=slurm or NoSlurm(),
        lock_path=str(tmp_path / "lock"),
        lookup_user=getpwnam,
        environ={},
        hostname="h",
    )
    answer: dict[str, Any] = json.loads(subject.answer(encode(json.dumps(request))))
    return answer


def output_request(tmp_path: Path, offset: int) -> dict[str, Any]:
    """An output query for job 77 whose stdout file exists (so it would be read)."""
    (tmp_path / "slurm-77.out").write_text("hello\n")
    query = {
        "job_id": "77",
        "offset": offset,
        "patterns": {"stdout": f"{tmp_path}/slurm-%j.out"},
        "user": "alice",
        "token": "hpcb:r77",
    }
    return {"v": 1, "op": "output", "output": query}


@pytest.mark.parametrize("offset", [2**62 + 1, 2**63, 10**19])
def test_output_offset_beyond_any_file_is_a_permanent_bad_request(
    tmp_path: Path, offset: int
) -> None:
    # GIVEN an output query with an offset no file reaches (2**63 overflowed os.pread before)
    request = output_request(tmp_path, offset)
    # WHEN answered
    result = ask(tmp_path, request)
    # THEN a permanent BAD_REQUEST naming the field and its bound, not a crash
    assert result["error"]["code"] == agent.BAD_REQUEST
    assert result["error"]["transient"] is False
    assert "output.offset" in result["error"]["message"]
    assert str(agent.MAX_OUTPUT_OFFSET) in result["error"]["message"]


def test_output_offset_at_the_bound_reads_nothing(tmp_path: Path) -> None:
    # GIVEN the largest offset the agent takes / WHEN answered
    (chunk,) = ask(tmp_path, output_request(tmp_path, agent.MAX_OUTPUT_OFFSET))["output"]
    # THEN an empty chunk at end of file
    assert (chunk["data"], chunk["eof"], chunk["offset"]) == ("", True, agent.MAX_OUTPUT_OFFSET)


def test_huge_offset_through_main_exits_zero_with_a_permanent_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the payload of issue 10: offset 10**30 for a file that exists
    monkeypatch.setenv("HPCB_AGENT_LOCK", str(tmp_path / "lock"))
    payload = encode(json.dumps(output_request(tmp_path, 10**30)))
    # WHEN the script's entry point runs it
    code = agent.main([payload])
    # THEN exit 0 (answered, not crashed) with a permanent error
    error = json.loads(capsys.readouterr().out)["error"]
    assert code == 0
    assert (error["code"], error["transient"]) == (agent.BAD_PAYLOAD, False)


@pytest.mark.parametrize(
    "text",
    [
        '{"v": 1, "op": "ping", "inline_limit": 1000000000000000000000}',
        '{"v": 100000000000000000000000000000000000000000, "op": "ping"}',
        '{"v": 1, "op": "status", "job_ids": [], "extra": [-123456789012345678901]}',
    ],
)
def test_integer_with_more_digits_than_any_field_is_a_bad_payload(text: str) -> None:
    # GIVEN a payload with an integer of 21 or more digits, anywhere
    subject = Agent(run=NoSlurm(), environ={}, hostname="h")
    # WHEN answered
    error = json.loads(subject.answer(encode(text)))["error"]
    # THEN a permanent BAD_PAYLOAD saying integers are limited
    assert (error["code"], error["transient"]) == (agent.BAD_PAYLOAD, False)
    assert f"{agent.MAX_INT_DIGITS} digits" in error["message"]


def test_staged_request_with_a_huge_integer_is_a_bad_payload(tmp_path: Path) -> None:
    # GIVEN a fetch whose staged request carries a 30-digit offset
    staged = b'{"v":1,"op":"output","output":{"job_id":"7","offset":' + b"9" * 30 + b"}}"
    subject = Agent(
        run=NoSlurm(), get=lambda url: staged, lock_path=str(tmp_path / "lock"), environ={}
    )
    fetch = {
        "v": 1,
        "op": "fetch",
        "payload_url": "https://bucket/key",
        "payload_sha256": hashlib.sha256(staged).hexdigest(),
    }
    # WHEN answered / THEN a permanent BAD_PAYLOAD
    error = json.loads(subject.answer(encode(json.dumps(fetch))))["error"]
    assert (error["code"], error["transient"]) == (agent.BAD_PAYLOAD, False)


@pytest.mark.parametrize("limit", [-1, agent.MAX_INLINE_LIMIT + 1, 10**19, "100", True, 1.5])
def test_unacceptable_inline_limit_is_refused_before_anything_runs(
    tmp_path: Path, limit: Any
) -> None:
    # GIVEN a submit whose inline_limit is out of range or not an integer
    slurm = NoSlurm()
    job = {"token": "hpcb:r1", "script": "#!/bin/sh\n", "options": {}}
    request = {"v": 1, "op": "submit", "jobs": [job], "inline_limit": limit}
    # WHEN answered
    error = ask(tmp_path, request, slurm)["error"]
    # THEN BAD_REQUEST naming the field, and no Slurm client was started (no job submitted)
    assert (error["code"], error["transient"]) == (agent.BAD_REQUEST, False)
    assert "inline_limit" in error["message"]
    assert slurm.calls == []


def test_malformed_result_url_is_refused_before_anything_runs(tmp_path: Path) -> None:
    # GIVEN a submit whose answer would be staged to a file:// URL
    slurm = NoSlurm()
    job = {"token": "hpcb:r1", "script": "#!/bin/sh\n", "options": {}}
    request = {"v": 1, "op": "submit", "jobs": [job], "result_put_url": "file:///etc/x"}
    # WHEN answered / THEN BAD_REQUEST before any sbatch (not after the job is in Slurm)
    assert ask(tmp_path, request, slurm)["error"]["code"] == agent.BAD_REQUEST
    assert slurm.calls == []


@pytest.mark.parametrize(
    ("key", "value"),
    [("nodes", 10**19), ("ntasks", "9" * 30), ("cpus_per_task", 2**64), ("hold", 10**19)],
)
def test_huge_integer_option_is_an_invalid_option(tmp_path: Path, key: str, value: Any) -> None:
    # GIVEN a job with an integer option far out of range (as a number or digits)
    slurm = NoSlurm()
    job = {"token": "hpcb:r1", "script": "#!/bin/sh\n", "options": {key: value}}
    # WHEN submitted
    (result,) = ask(tmp_path, {"v": 1, "op": "submit", "jobs": [job]}, slurm)["results"]
    # THEN that job fails permanently with INVALID_OPTION; nothing ran
    assert (result["error"]["code"], result["error"]["transient"]) == (agent.INVALID_OPTION, False)
    assert slurm.calls == []
