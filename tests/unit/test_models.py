"""Validation of job specs: tight patterns for options, the script as data."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from broker.agent import hpcb_agent
from broker.jobs.models import JobSpec, JobSubmitMessage, slurm_token
from broker.schema import new_request_id

SCRIPT = "#!/bin/bash\necho hello\n"


def spec(**fields: Any) -> JobSpec:
    return JobSpec.model_validate({"script": SCRIPT, **fields})


def test_a_minimal_spec_is_just_a_script() -> None:
    # GIVEN only a script / WHEN validated / THEN every option is unset
    job = spec()
    assert job.script == SCRIPT
    assert job.name is None
    assert job.partition is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "x; rm -rf /"),
        ("name", "$(id)"),
        ("name", "-o/etc/passwd"),
        ("partition", "compute --uid=0"),
        ("partition", "a\nb"),
        ("account", "`whoami`"),
        ("time_limit", "10; reboot"),
        ("time_limit", "abc"),
        ("mem", "4G --wrap=id"),
        ("mem", "0"),
        ("working_directory", "relative/dir"),
        ("working_directory", "/tmp/../etc"),
        ("nodes", 0),
        ("cpus_per_task", -1),
    ],
)
def test_options_outside_their_pattern_are_rejected(field: str, value: Any) -> None:
    # GIVEN an option value that could smuggle text into a command line, or is just wrong
    # WHEN the spec is validated
    # THEN it is rejected, naming the field
    with pytest.raises(ValidationError) as info:
        spec(**{field: value})
    assert field in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "sweep-01.run_2"),
        ("partition", "compute"),
        ("time_limit", "90"),
        ("time_limit", "1-12:00:00"),
        ("time_limit", "UNLIMITED"),
        ("mem", "4G"),
        ("working_directory", "/home/user/run 1"),
    ],
)
def test_ordinary_option_values_are_accepted(field: str, value: Any) -> None:
    # GIVEN a normal value / WHEN validated / THEN it is kept as given
    assert getattr(spec(**{field: value}), field) == value


def test_unknown_fields_are_rejected() -> None:
    # GIVEN a field the API does not know (e.g. a raw sbatch option string)
    # WHEN validated / THEN it is an error, not silently ignored
    with pytest.raises(ValidationError, match="sbatch_options"):
        spec(sbatch_options="--uid=0")


def test_script_text_is_arbitrary_but_needs_a_shebang() -> None:
    # GIVEN script text with shell metacharacters / WHEN validated / THEN it is accepted as data
    assert spec(script="#!/bin/sh\necho $(id) '; rm -rf / `x`\n").script.startswith("#!")
    # AND a script without a shebang is rejected with a hint
    with pytest.raises(ValidationError, match="shebang"):
        spec(script="echo hi")


def test_script_with_nul_is_rejected() -> None:
    # GIVEN a script containing NUL / WHEN validated / THEN rejected
    with pytest.raises(ValidationError, match="NUL"):
        spec(script="#!/bin/sh\necho \x00")


def test_request_ids_are_unique_time_ordered_and_url_safe() -> None:
    # GIVEN many new ids / THEN all differ, match the documented shape, and sort by creation
    ids = [new_request_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(re.fullmatch(r"r[0-9a-f]{28}", i) for i in ids)
    assert ids[0][:13] <= ids[-1][:13]


def test_slurm_token_carries_the_request_id() -> None:
    # GIVEN a request id / THEN its Slurm comment token names it
    assert slurm_token("r0123") == "hpcb:r0123"


def test_queue_messages_round_trip_and_forbid_extras() -> None:
    # GIVEN a message / WHEN serialised and parsed back / THEN it is identical
    message = JobSubmitMessage(
        request_id="r1", owner="arn:x", cluster="local", user="u1", spec=spec()
    )
    assert JobSubmitMessage.model_validate_json(message.model_dump_json()) == message
    # AND an unknown field in a message is an error
    with pytest.raises(ValidationError):
        JobSubmitMessage.model_validate({**message.model_dump(), "extra": 1})


def test_the_api_and_the_agent_refuse_the_same_environment_names() -> None:
    # GIVEN both lists / THEN equal, so a user gets a 422 instead of a failed submission
    from broker.agent import hpcb_agent  # noqa: PLC0415
    from broker.jobs import models  # noqa: PLC0415

    assert models.RESERVED_ENV_NAMES == hpcb_agent.RESERVED_ENV_NAMES | hpcb_agent.LIBC_ENV_NAMES
    assert models.RESERVED_ENV_PREFIXES == hpcb_agent.RESERVED_ENV_PREFIXES


@pytest.mark.parametrize("name", ["GLIBC_TUNABLES", "LD_PRELOAD", "SLURM_JOB_ID", "PATH"])
def test_reserved_environment_names_are_rejected(name: str) -> None:
    # GIVEN a reserved variable name / WHEN validated / THEN rejected naming it
    with pytest.raises(ValidationError, match=name):
        spec(environment={name: "x"})


@pytest.mark.parametrize(
    "name",
    ["BASH_ENV", "PYTHONPATH", "PERL5OPT", "NODE_OPTIONS", "SHELLOPTS", "PS4", "PROMPT_COMMAND",
     "RUBYOPT", "JAVA_TOOL_OPTIONS", "LD_PRELOAD", "SLURM_JOB_UID", "SBATCH_EXPORT", "PATH",
     "MYVAR", "HPCBX", "APP_", "Omp_NUM_THREADS"],
)  # fmt: skip
def test_environment_names_outside_the_allowlist_are_refused(name: str) -> None:
    # GIVEN a name no allowlisted family covers (interpreter and loader hooks among them)
    # WHEN a job sets it / THEN 422 naming it; the agent refuses it too
    with pytest.raises(ValidationError) as refused:
        spec(environment={name: "x"})
    assert repr(name) in str(refused.value)
    assert not hpcb_agent._ENV_NAME.fullmatch(name)


@pytest.mark.parametrize(
    "name", ["input_file", "_private", "APP_STEP", "PARAM_ALPHA", "HPCB_RUN", "OMP_NUM_THREADS",
             "OMPI_MCA_btl", "CUDA_VISIBLE_DEVICES", "I_MPI_PIN", "NCCL_DEBUG"],
)  # fmt: skip
def test_environment_names_in_the_allowlist_are_accepted(name: str) -> None:
    assert spec(environment={name: "x"}).environment == {name: "x"}
    assert hpcb_agent._ENV_NAME.fullmatch(name)
