"""One source of each validation rule: the head-node agent keeps its own stdlib copy of the
broker's patterns and bounds (it must travel as one file, without pydantic), and these tests keep
each copy EQUAL to the pydantic models' (``broker/jobs/models.py``, ``broker/agent/protocol.py``).

Where the two differ on purpose or by omission, ``KNOWN_DIFFERENCES`` names the difference and a
test checks it is exactly that, so a change on either side shows up here."""

from __future__ import annotations

import typing
from typing import Any

import pytest
from pydantic import ValidationError

from broker.agent import hpcb_agent as agent
from broker.agent import protocol
from broker.jobs import models
from broker.jobs.models import SCHEDULER_DIRECTIVE_PATTERN, Dependency, JobSpec

JOB_SPEC = JobSpec.model_json_schema()
REQUEST = protocol.AgentRequest.model_json_schema()
QUERY = protocol.OutputQuery.model_json_schema()

#: Agent option key -> why its rule is not a plain copy of JobSpec's field of the same name.
KNOWN_DIFFERENCES = {
    "working_directory": "AbsPath: the agent's pattern also refuses '..' components (a lookahead); "
    "JobSpec refuses them in a field validator",
    "output": "AbsPath, as working_directory",
    "error": "AbsPath, as working_directory",
    "dependency": "JobSpec has a list of Dependency models; the agent a pattern of Slurm's form, "
    "built from the same types, job id pattern and counts",
    "hold": "JobSpec has a bool; the agent takes 0 or 1 (AgentJob.of sends 1 when held)",
    "output.offset": "protocol.OutputQuery.offset (and models.OutputQueryBody.offset) have no "
    "maximum; the agent refuses above MAX_OUTPUT_OFFSET (2**62), permanently",
    "output.job_name": "protocol.OutputQuery.job_name has no pattern; the agent checks JobName's",
    "output.patterns": "protocol.OutputQuery.patterns values have no pattern; the agent checks "
    "AbsPath's (with the '..' lookahead)",
}
#: The agent's lookahead that refuses '..' path components.
NO_PARENT = r"(?!.*(^|/)\.\.(/|$))"


def field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    """A property of a JSON schema, without the ``null`` branch of an optional field."""
    prop: dict[str, Any] = schema["properties"][name]
    branches = [branch for branch in prop.get("anyOf", [prop]) if branch.get("type") != "null"]
    assert len(branches) == 1
    return branches[0]


def option(key: str) -> Any:
    (validator,) = [validator for name, _, validator in agent.OPTIONS if name == key]
    return validator


def plain_options(kind: type) -> list[str]:
    return [
        key
        for key, _, validator in agent.OPTIONS
        if type(validator) is kind and key not in KNOWN_DIFFERENCES
    ]


@pytest.mark.parametrize("key", plain_options(agent._Text))
def test_text_option_has_the_job_spec_pattern(key: str) -> None:
    # GIVEN a text option the agent checks / THEN its pattern is JobSpec's, and so is its length
    broker = field(JOB_SPEC, key)
    assert option(key).pattern.pattern == broker["pattern"]
    if "maxLength" in broker:
        assert option(key).max_chars == broker["maxLength"]


@pytest.mark.parametrize("key", plain_options(agent._Int))
def test_integer_option_has_the_job_spec_bounds(key: str) -> None:
    # GIVEN an integer option / THEN the agent's range is JobSpec's
    broker = field(JOB_SPEC, key)
    assert (option(key).low, option(key).high) == (broker["minimum"], broker["maximum"])


def test_every_option_is_checked_above_or_named_as_a_difference() -> None:
    # GIVEN the agent's options / THEN each is a plain copy tested above, or a named difference
    plain = set(plain_options(agent._Text)) | set(plain_options(agent._Int))
    named = {key for key, _, _ in agent.OPTIONS} & set(KNOWN_DIFFERENCES)
    assert plain | named == {key for key, _, _ in agent.OPTIONS}
    assert not plain & named


@pytest.mark.parametrize("key", ["working_directory", "output", "error"])
def test_path_options_are_abs_path_plus_the_parent_lookahead(key: str) -> None:
    # GIVEN JobSpec's AbsPath pattern / THEN the agent's is it with the '..' lookahead in front
    broker = field(JOB_SPEC, key)["pattern"]
    assert broker.startswith("^/")
    assert option(key).pattern.pattern == "^" + NO_PARENT + broker[1:]


def test_path_lookahead_refuses_what_the_job_spec_validator_refuses() -> None:
    # GIVEN paths with and without '..' components
    # ('/..' and '/../etc' passed the agent's pattern when its lookahead stood after the '/')
    paths = ["/a/../b", "/..", "/../etc", "/a/..", "/a/..b/c", "/a/b..", "/a/.../b", "/.x"]
    for path in paths:
        # WHEN checked by both / THEN they agree
        try:
            JobSpec(script="#!/bin/sh\n", working_directory=path)
            broker_accepts = True
        except ValidationError:
            broker_accepts = False
        assert bool(agent._ABS_PATH.fullmatch(path)) == broker_accepts, path


def test_dependency_pattern_is_built_from_the_dependency_model() -> None:
    # GIVEN Dependency's types, the Slurm branch of JobRef, and the two counts
    types = "|".join(typing.get_args(Dependency.model_fields["type"].annotation))
    dependency = JOB_SPEC["$defs"]["Dependency"]["properties"]["jobs"]
    job_ref = dependency["items"]["pattern"]  # ^(broker id|slurm id)$
    slurm_id = job_ref[2:-2].split("|", 1)[1]
    jobs, conditions = dependency["maxItems"], field(JOB_SPEC, "dependency")["maxItems"]
    one = rf"({types})(:{slurm_id}){{1,{jobs}}}"
    # THEN the agent's pattern is exactly those conditions joined by ','
    assert agent._DEPENDENCY.pattern == rf"^{one}(,{one}){{0,{conditions - 1}}}$"


def test_slurm_job_id_is_the_protocols_and_job_refs_slurm_branch() -> None:
    assert agent._SLURM_JOB_ID.pattern == protocol.SLURM_JOB_ID
    job_ref = typing.get_args(models.JobRef)[1].pattern
    assert job_ref[2:-2].split("|", 1)[1] == protocol.SLURM_JOB_ID[1:-1]


def test_token_is_the_agent_jobs_pattern() -> None:
    token = protocol.AgentJob.model_json_schema()["properties"]["token"]["pattern"]
    assert agent._TOKEN.pattern == token


def test_user_and_token_are_the_protocols_everywhere_they_travel() -> None:
    # GIVEN the user and token fields of a submitted job, a cancel target and an output query
    models_ = (protocol.AgentJob, protocol.JobTarget, protocol.OutputQuery)
    schemas = [model.model_json_schema()["properties"] for model in models_]
    # THEN each is the agent's own pattern, and the default minimum uid is the agent's
    assert {s["user"]["pattern"] for s in schemas} == {agent._POSIX_USER.pattern}
    assert {s["token"]["pattern"] for s in schemas} == {agent._TOKEN.pattern}
    assert protocol.DEFAULT_MIN_UID == agent.DEFAULT_MIN_UID


def test_job_name_is_the_job_specs() -> None:
    # (also the agent's check of output.job_name, which the protocol leaves open)
    assert agent._JOB_NAME.pattern == field(JOB_SPEC, "name")["pattern"]
    assert "pattern" not in field(QUERY, "job_name")


def test_environment_names_and_count_are_the_job_specs() -> None:
    environment = field(JOB_SPEC, "environment")
    assert agent._ENV_NAME.pattern == environment["propertyNames"]["pattern"]
    assert environment["maxProperties"] == agent.MAX_ENV_VARS


def test_environment_value_length_is_the_job_specs() -> None:
    # GIVEN values at the agent's limit and one past it / THEN JobSpec draws the same line
    at_limit = "x" * agent.MAX_ENV_VALUE_CHARS
    JobSpec(script="#!/bin/sh\n", environment={"APP_A": at_limit})
    with pytest.raises(ValidationError):
        JobSpec(script="#!/bin/sh\n", environment={"APP_A": at_limit + "x"})


def test_script_limit_is_the_brokers() -> None:
    assert agent.MAX_SCRIPT_BYTES == models.MAX_SCRIPT_BYTES


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [
        ("lookback_seconds", agent.MIN_LOOKBACK_SECONDS, agent.MAX_LOOKBACK_SECONDS),
        ("concurrency", 1, agent.MAX_SUBMIT_CONCURRENCY),
        ("inline_limit", 0, agent.MAX_INLINE_LIMIT),
        ("min_uid", 1, agent.MAX_UID),
    ],
)
def test_request_integer_bounds_are_the_protocols(name: str, low: int, high: int) -> None:
    bounds = field(REQUEST, name)
    assert (low, high) == (bounds["minimum"], bounds["maximum"])


def test_output_bounds_are_the_protocols() -> None:
    max_bytes = field(QUERY, "max_bytes")
    assert agent.MAX_OUTPUT_BYTES == protocol.MAX_OUTPUT_BYTES == max_bytes["maximum"]
    assert max_bytes["minimum"] == 1
    assert agent.MAX_INLINE_LIMIT == protocol.MAX_INLINE_LIMIT


def test_output_offset_difference_is_the_named_one() -> None:
    # GIVEN KNOWN_DIFFERENCES["output.offset"] / THEN the protocol has a minimum and no maximum
    offset = field(QUERY, "offset")
    assert (offset["minimum"], "maximum" in offset) == (0, False)
    assert agent.MAX_OUTPUT_OFFSET == 2**62


def test_output_patterns_difference_is_the_named_one() -> None:
    # GIVEN KNOWN_DIFFERENCES["output.patterns"] / THEN the protocol's values are any string
    values = QUERY["properties"]["patterns"]["additionalProperties"]
    assert values == {"type": "string"}


@pytest.mark.parametrize("path", ["/..", "/../etc", "/../../root/.ssh"])
def test_path_starting_with_a_parent_component_is_an_invalid_option(path: str) -> None:
    # GIVEN a job whose working directory begins with '..' (JobSpec refuses it)
    job = {"token": "hpcb:r1", "script": "#!/bin/sh\n", "options": {"working_directory": path}}
    # WHEN the agent builds its sbatch / THEN INVALID_OPTION, as for '..' further in
    with pytest.raises(agent.AgentError) as refused:
        agent.SbatchCommand(job)
    assert refused.value.code == agent.INVALID_OPTION


def test_scheduler_directive_pattern_is_the_job_specs() -> None:
    # GIVEN the schema's "no scheduler directive" rule of a script, and the agent's copy
    script = field(JOB_SPEC, "script")
    # THEN they are the same pattern, and it is the models' constant
    assert script["not"]["pattern"] == agent.SCHEDULER_DIRECTIVE_PATTERN
    assert agent.SCHEDULER_DIRECTIVE_PATTERN == SCHEDULER_DIRECTIVE_PATTERN
