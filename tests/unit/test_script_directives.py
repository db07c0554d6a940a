"""Scripts cannot escape validation (issue 12): a scheduler directive in a script's leading
comment block (what sbatch reads as options, e.g. ``#SBATCH --uid=0``) is refused with a 422
naming the line; the agent refuses it again and runs sbatch with ``--ignore-pbs``.

What sbatch itself reads was measured on this machine's Slurm 22.05 (``--hold`` jobs, job name
read back): ``#SBATCH`` at column 0, with or without a space before the option, after blank
lines and comments, and ``#PBS`` and ``#BSUB`` lines; not ``# SBATCH``, not lower case, not
indented, nothing after the first command; CRLF scripts are refused by sbatch. The broker
refuses a superset (tests/integration/test_script_directives_slurm.py checks it on sbatch)."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from broker.agent import hpcb_agent as agent
from broker.jobs.models import SCHEDULER_DIRECTIVE_PATTERN, JobSpec, scheduler_directive

REFUSED = {
    "sbatch option": "#!/bin/bash\n#SBATCH --uid=0\ntrue\n",
    "after blank lines and comments": "#!/bin/bash\n\n# my job\n\n#SBATCH --priority=1\ntrue\n",
    "no space before the option": "#!/bin/sh\n#SBATCH--export-file=/etc/shadow\n",
    "indented": "#!/bin/sh\n   #SBATCH --array=0-100000\n",
    "tab before it": "#!/bin/sh\n\t#SBATCH --mail-user=x@example.org\n",
    "lower case": "#!/bin/sh\n#sbatch --uid=0\n",
    "blank after the hash": "#!/bin/sh\n# SBATCH --uid=0\n",
    "CRLF line ends": "#!/bin/sh\r\n#SBATCH --uid=0\r\ntrue\r\n",
    "PBS": "#!/bin/sh\n#PBS -u root\n",
    "BSUB": "#!/bin/sh\n#BSUB -J x\n",
    "SGE": "#!/bin/sh\n#$ -u root\n",
    "Moab": "#!/bin/sh\n#MSUB -l x\n",
    "Flux": "#!/bin/sh\n#FLUX: --exclusive\n",
    "right after the shebang, no newline": "#!/bin/sh\n#SBATCH --uid=0",
}
ACCEPTED = {
    "after the first command (data to sbatch)": "#!/bin/sh\ncat > next.sh <<'X'\n#SBATCH -n 4\nX\n",
    "a word in a comment": "#!/bin/sh\n# submit with #SBATCH-free scripts only\ntrue\n",
    "in a string": "#!/bin/sh\necho '#SBATCH --uid=0'\n",
    "plain script": "#!/bin/bash\nset -e\necho hello\n",
}


@pytest.mark.parametrize("script", REFUSED.values(), ids=REFUSED.keys())
def test_a_directive_is_refused_with_its_line(script: str) -> None:
    # WHEN a spec with it is validated / THEN 422 on the script, naming the line and the fields
    with pytest.raises(ValidationError) as refused:
        JobSpec(script=script)
    (error,) = refused.value.errors()
    assert error["loc"] == ("script",)
    line, text = scheduler_directive(script) or (0, "")
    assert f"line {line}: {text!r}" in error["msg"]
    assert "use the job's fields" in error["msg"]


@pytest.mark.parametrize("script", REFUSED.values(), ids=REFUSED.keys())
def test_the_documented_pattern_and_the_agent_refuse_it_too(script: str) -> None:
    # THEN the OpenAPI document's pattern (ECMA, as Python reads it) matches it, and the
    # head-node agent refuses it as well (defence in depth: INVALID_SCRIPT, permanent)
    assert re.search(SCHEDULER_DIRECTIVE_PATTERN, script)
    with pytest.raises(agent.AgentError) as refused:
        agent.validate_script(script)
    assert (refused.value.code, refused.value.transient) == (agent.INVALID_SCRIPT, False)


@pytest.mark.parametrize("script", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_text_sbatch_never_reads_as_options_is_accepted(script: str) -> None:
    assert JobSpec(script=script).script == script
    assert not re.search(SCHEDULER_DIRECTIVE_PATTERN, script)
    assert agent.validate_script(script) == script.encode()


def test_sbatch_runs_with_ignore_pbs() -> None:
    job = {"token": "hpcb:rx", "script": "#!/bin/sh\ntrue\n", "user": "alice"}
    assert "--ignore-pbs" in agent.SbatchCommand(job).argv()
