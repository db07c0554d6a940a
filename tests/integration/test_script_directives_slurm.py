"""Scheduler directives on the real sbatch (issue 12): every line this machine's sbatch reads as
an option is refused by the broker, so the unit corpus (tests/unit/test_script_directives.py)
is not a guess. For each form, a held job submitted with sbatch itself (as root, outside the
broker) shows whether sbatch took the directive (its job name changed); the broker's model and
the agent refuse every form sbatch takes, and the agent, driven as a real user, submits nothing.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from broker.agent.protocol import AgentJob, AgentRequest, AgentResponse
from broker.jobs.models import scheduler_directive, slurm_token
from broker.ports import ClusterTarget
from broker.runners.local import LocalRunner
from broker.schema import new_request_id
from tests.integration.conftest import USER_A

pytestmark = pytest.mark.slurm

FORMS = {
    "column 0": "#SBATCH --job-name={name}",
    "no space": "#SBATCH--job-name={name}",
    "after a blank line": "\n#SBATCH --job-name={name}",
    "PBS": "#PBS -N {name}",
    "BSUB": "#BSUB -J {name}",
    "indented": "  #SBATCH --job-name={name}",
    "blank after the hash": "# SBATCH --job-name={name}",
    "lower case": "#sbatch --job-name={name}",
}


def sbatch_takes(directive: str, tmp_path: Path) -> bool:
    """Whether this machine's sbatch reads ``directive`` as an option (as root, held job)."""
    name = f"d{uuid.uuid4().hex[:10]}"
    script = tmp_path / f"{name}.sh"
    script.write_text(f"#!/bin/sh\n{directive.format(name=name)}\ntrue\n")
    job_id = subprocess.run(
        ["sbatch", "--hold", "--parsable", "-o", "/dev/null", str(script)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    try:
        shown = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%j"], capture_output=True,
                               text=True, check=True).stdout.strip()  # fmt: skip
    finally:
        subprocess.run(["scancel", job_id], check=False)
    return shown == name


def test_every_form_sbatch_reads_is_refused_by_the_broker(
    slurm: dict[str, str], tmp_path: Path
) -> None:
    taken = {title: sbatch_takes(form, tmp_path) for title, form in FORMS.items()}
    print("\nsbatch reads:", taken)
    # THEN sbatch reads at least these three forms (so the check means something) ...
    assert {"column 0", "no space", "after a blank line"} <= {t for t, v in taken.items() if v}
    # ... and the broker refuses every form, read by sbatch or not (a superset)
    for form in FORMS.values():
        script = f"#!/bin/sh\n{form.format(name='x')}\ntrue\n"
        assert scheduler_directive(script) is not None, form


def test_the_agent_refuses_a_directive_and_nothing_reaches_slurm(
    slurm: dict[str, str], test_users: tuple[str, str]
) -> None:
    # GIVEN a script with #SBATCH --uid=0, sent straight to the agent (past the API) as user A
    name = f"uid0-{uuid.uuid4().hex[:8]}"
    job = AgentJob(
        token=slurm_token(new_request_id()), user=USER_A,
        script="#!/bin/sh\n#SBATCH --uid=0\nid -u\n", options={"name": name, "hold": 1},
    )  # fmt: skip
    response: AgentResponse = LocalRunner(timeout=60).run(
        ClusterTarget(name="local", mode="local"), AgentRequest(op="submit", jobs=[job])
    )
    # THEN that job fails permanently (INVALID_SCRIPT) and Slurm has no job of that name
    (result,) = response.results
    assert result.job_id is None
    assert result.error is not None
    assert (result.error.code, result.error.transient) == ("INVALID_SCRIPT", False)
    listed = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True,
                            text=True, check=True).stdout.split()  # fmt: skip
    assert listed == []
