"""The worker side of the agent protocol: request encoding, payload safety, answer decoding."""

from __future__ import annotations

import base64
import json

import pytest

from broker.agent import hpcb_agent
from broker.agent.protocol import (
    AgentJob,
    AgentRequest,
    AgentResponse,
    decode_response,
    encode_request,
    is_safe_payload,
)
from broker.errors import TransientError
from broker.jobs.models import Dependency, JobSpec, slurm_token


def submit_request() -> AgentRequest:
    spec = JobSpec(script="#!/bin/bash\necho 'hi' \"$(id)\" ü\n", name="j1", nodes=2)
    return AgentRequest(op="submit", jobs=[AgentJob.of(slurm_token("rabc123"), spec, user="alice")])


def test_encoded_request_decodes_back_to_the_same_request() -> None:
    # GIVEN a submit request with shell-hostile and non-ASCII script text
    request = submit_request()
    # WHEN encoded and decoded
    decoded = AgentRequest.model_validate_json(base64.b64decode(encode_request(request)))
    # THEN it is the same request
    assert decoded == request


def test_agent_decodes_what_the_worker_encodes() -> None:
    # GIVEN an encoded request / WHEN the agent decodes it / THEN it sees the same fields
    request = submit_request()
    decoded = hpcb_agent.decode_payload(encode_request(request))
    assert decoded["jobs"][0]["script"] == request.jobs[0].script
    assert decoded["jobs"][0]["options"] == {"name": "j1", "nodes": 2}


def test_agent_job_carries_options_without_the_script() -> None:
    # GIVEN a validated spec / WHEN turned into an agent job / THEN options exclude the script
    job = submit_request().jobs[0]
    assert "script" not in job.options
    assert job.token == slurm_token("rabc123")


def test_every_agent_job_option_is_known_to_the_agent() -> None:
    # GIVEN every JobSpec field that becomes an sbatch option (the script travels on stdin, the
    # environment through sbatch's process environment, tags stay with the broker)
    fields = set(JobSpec.model_fields) - {"script", "environment", "tags"}
    # WHEN compared with the agent's option table / THEN they are the same set
    assert fields == {key for key, _, _ in hpcb_agent.OPTIONS}


def test_agent_accepts_a_job_built_from_a_spec_using_every_field() -> None:
    # GIVEN a spec with every field set, and its dependencies resolved to Slurm ids
    spec = JobSpec(
        script="#!/bin/bash\ntrue\n",
        name="all-fields",
        partition="compute",
        account="proj",
        qos="normal",
        time_limit="1:00:00",
        nodes=1,
        ntasks=2,
        cpus_per_task=1,
        mem="1G",
        working_directory="/shared/run",
        output="/shared/run/%x-%A_%a.out",
        error="/shared/run/%x-%A_%a.err",
        array="1-10%2",
        dependency=[Dependency(type="afterok", jobs=["12", "13_2"])],
        environment={"APP_MYVAR": "x y"},
        hold=True,
        tags={"team": "a"},
    )
    job = AgentJob.of(slurm_token("rall"), spec, dependency="afterok:12:13_2", user="alice")
    # WHEN the agent validates it as it arrives (JSON)
    command = hpcb_agent.SbatchCommand(json.loads(job.model_dump_json()))
    # THEN every option became one argument and the variable stayed out of argv
    assert command.argv()[5:] == [
        "--job-name=all-fields",
        "--partition=compute",
        "--account=proj",
        "--qos=normal",
        "--time=1:00:00",
        "--nodes=1",
        "--ntasks=2",
        "--cpus-per-task=1",
        "--mem=1G",
        "--chdir=/shared/run",
        "--output=/shared/run/%x-%A_%a.out",
        "--error=/shared/run/%x-%A_%a.err",
        "--array=1-10%2",
        "--dependency=afterok:12:13_2",
        "--hold",
    ]
    assert command.environment == {"APP_MYVAR": "x y"}


def test_encoded_request_is_a_safe_payload() -> None:
    # GIVEN any request / WHEN encoded / THEN only base64 characters
    assert is_safe_payload(encode_request(submit_request()))


@pytest.mark.parametrize("payload", ["abc'", "a b", "a;b", "$(id)", "a\nb", "ab==c", "a`b`"])
def test_non_base64_payload_is_unsafe(payload: str) -> None:
    # GIVEN text with shell-significant characters / WHEN checked / THEN unsafe
    assert not is_safe_payload(payload)


def test_decode_response_reads_the_last_non_empty_line() -> None:
    # GIVEN noise before the answer line (e.g. a login banner)
    stdout = 'banner\n{"v":1,"ok":true,"op":"ping","info":{"python":"3.7.16"}}\n\n'
    # WHEN decoded / THEN the answer
    assert decode_response(stdout) == AgentResponse(ok=True, op="ping", info={"python": "3.7.16"})


def test_decode_response_accepts_the_staged_marker() -> None:
    # GIVEN the staged marker / WHEN decoded / THEN staged is set
    assert decode_response('{"v":1,"ok":true,"op":"submit","staged":true}').staged


@pytest.mark.parametrize(
    ("stdout", "code"),
    [
        ("", "AGENT_NO_OUTPUT"),
        ("   \n\n", "AGENT_NO_OUTPUT"),
        ("Traceback (most recent call last):", "AGENT_BAD_OUTPUT"),
        ('{"v":1,"ok":true,"op":"sub', "AGENT_BAD_OUTPUT"),
        ('{"v":1}', "AGENT_BAD_OUTPUT"),
        ("[1, 2]", "AGENT_BAD_OUTPUT"),
    ],
)
def test_decode_response_errors_are_transient(stdout: str, code: str) -> None:
    # GIVEN output that is not an agent answer
    # WHEN decoded
    with pytest.raises(TransientError) as caught:
        decode_response(stdout)
    # THEN a transient error with a stable code
    assert caught.value.code == code


def test_agent_answers_validate_as_agent_responses() -> None:
    # GIVEN the agent's error answer document / WHEN decoded by the worker / THEN it validates
    line = json.dumps(
        hpcb_agent.error_response("submit", hpcb_agent.AgentError("X", "y", transient=True))
    )
    response = decode_response(line)
    assert response.error is not None
    assert response.error.transient
