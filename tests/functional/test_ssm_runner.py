"""SsmRunner against moto over real HTTP (SSM and S3).

moto's SSM records a command and reports Success with empty output; it runs nothing. The
``HeadNode`` wrapper below plays the head node: after each SendCommand it runs the command that
moto received the way SSM's ``aws:runShellScript`` would (``bash -c``; ``python3`` is Python 3.7
when available, as on Amazon Linux 2; a small fake Slurm on PATH), then writes the outcome into
moto's invocation (stdout cut at SSM's 24,000 characters). Presigned S3 URLs are used for real
by the agent against moto's S3. Error codes and statuses moto cannot produce are injected by the
same wrapper.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.ssm.models import ssm_backends

from broker.agent.protocol import AgentJob, AgentRequest
from broker.errors import (
    PayloadTooLargeError,
    PermanentError,
    RunnerTimeoutError,
    ThrottledError,
    TransientError,
)
from broker.jobs.models import JobSpec, slurm_token
from broker.ports import ClusterTarget
from broker.runners import AGENT_PATH
from broker.runners.ssm import STDOUT_LIMIT, SsmRunner, agent_b64, compact_agent
from broker.schema import new_request_id

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
INSTANCE_ID = "i-0123456789abcdef0"
TARGET = ClusterTarget(name="prod", mode="ssm", instance_id=INSTANCE_ID)
COMMAND = re.compile(
    r"python3 -c \"import base64,sys,zlib;exec\(compile\(zlib\.decompress\(base64\.b64decode\("
    r"'(?P<agent>[A-Za-z0-9+/]+={0,2})'\)\),'hpcb_agent\.py','exec'\)\)\" "
    r"'(?P<payload>[A-Za-z0-9+/]*={0,2})'"
)

#: The head node's user of these jobs: the agent looks users up for real, and ``nobody`` exists
#: on every machine (uid 65534); the fake setpriv below does not change users.
JOB_USER = "nobody"
# The fakes keep their state beside $SLURM_CONF: the one variable the agent gives both its own
# queries and the processes it starts as a user (whose HOME is the user's).
FAKE_SETPRIV = r"""#!/bin/sh
# Fake setpriv (no root needed): records its options, then runs the command after "--" as is.
echo "$*" >> "$(dirname "$SLURM_CONF")/setpriv"
while [ "$1" != "--" ]; do shift; done
shift
exec "$@"
"""
FAKE_SBATCH = r"""#!/bin/sh
# Fake sbatch: script on stdin, one job per call, remembered for the fake squeue.
state=$(dirname "$SLURM_CONF")
comment=""; partition=""
for arg in "$@"; do
  case $arg in
    --version) echo "slurm-wlm 22.05.8"; exit 0 ;;
    --comment=*) comment=${arg#--comment=} ;;
    --partition=*) partition=${arg#--partition=} ;;
  esac
done
cat >> "$state/scripts"
if [ "$partition" = noisy ]; then  # a long error (the agent keeps 1,000 characters of it)
  for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
    echo "sbatch: error: a long explanation of why this job cannot run, line $i" >&2
  done
  exit 1
fi
if [ "$partition" = nope ]; then
  echo "sbatch: error: invalid partition specified: nope" >&2
  echo "sbatch: error: Batch job submission failed: Invalid partition name specified" >&2
  exit 1
fi
n=$(( $(cat "$state/next" 2>/dev/null || echo 100) + 1 ))
echo "$n" > "$state/next"
echo "$n|$USER|$comment" >> "$state/queue"
echo "$n"
"""
FAKE_SQUEUE = """#!/bin/sh
cat "$(dirname "$SLURM_CONF")/queue" 2>/dev/null
exit 0
"""
FAKE_SACCT = """#!/bin/sh
echo "sacct: error: Slurm accounting storage is disabled" >&2
exit 1
"""


def head_node_python() -> str:
    """Python 3.7 (the oldest the agent supports) when installed, else this interpreter."""
    candidates = sorted(Path.home().glob(".pyenv/versions/3.7*/bin/python3.7"))
    return str(candidates[0]) if candidates else sys.executable


@dataclass
class HeadNode:
    """Wraps a boto3 SSM client; plays the head node for each command moto records."""

    ssm: Any
    env: dict[str, str]
    state_dir: Path
    #: "run" executes the command; any other value is written as the invocation's status.
    outcome: str = "run"
    stdout: str = ""
    stderr: str = ""
    response_code: int = 0
    send_error: str | None = None
    missing_polls: int = 0
    sent: list[str] = field(default_factory=list)
    stdouts: list[str] = field(default_factory=list)
    staged_objects: list[list[str]] = field(default_factory=list)
    s3: Any = None
    bucket: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ssm, name)

    def send_command(self, **kwargs: Any) -> Any:
        if self.send_error:
            raise ClientError(
                {"Error": {"Code": self.send_error, "Message": "injected"}}, "SendCommand"
            )
        sent = self.ssm.send_command(**kwargs)
        moto_command = ssm_backends[ACCOUNT][REGION].get_command_by_id(sent["Command"]["CommandId"])
        command = moto_command.parameters["commands"][0]  # as moto received it over HTTP
        self.sent.append(command)
        if self.bucket:
            listed = self.s3.list_objects_v2(Bucket=self.bucket).get("Contents", [])
            self.staged_objects.append([obj["Key"] for obj in listed])
        invocation = moto_command.invocations[0]
        if self.outcome == "run":
            self._run(command, invocation)
        else:
            invocation.update(
                Status=self.outcome,
                StatusDetails=self.outcome,
                StandardOutputContent=self.stdout,
                StandardErrorContent=self.stderr,
                ResponseCode=self.response_code,
            )
        return sent

    def _run(self, command: str, invocation: dict[str, Any]) -> None:
        done = subprocess.run(
            ["/bin/bash", "-c", command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.stdouts.append(done.stdout)
        status = "Success" if done.returncode == 0 else "Failed"
        invocation.update(
            Status=status,
            StatusDetails=status,
            StandardOutputContent=done.stdout[:STDOUT_LIMIT],
            StandardErrorContent=done.stderr[:8000],
            ResponseCode=done.returncode,
        )

    def get_command_invocation(self, **kwargs: Any) -> Any:
        if self.missing_polls > 0:
            self.missing_polls -= 1
            raise ClientError(
                {"Error": {"Code": "InvocationDoesNotExist", "Message": ""}},
                "GetCommandInvocation",
            )
        return self.ssm.get_command_invocation(**kwargs)

    def submitted_scripts(self) -> str:
        path = self.state_dir / "scripts"
        return path.read_text() if path.exists() else ""


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def fake_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bin_dir = tmp_path_factory.mktemp("head-node-bin")
    (bin_dir / "python3").symlink_to(head_node_python())
    fakes = (
        ("sbatch", FAKE_SBATCH),
        ("squeue", FAKE_SQUEUE),
        ("sacct", FAKE_SACCT),
        ("setpriv", FAKE_SETPRIV),
    )
    for name, text in fakes:
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    return bin_dir


@pytest.fixture
def head(moto_url: str, fake_bin: Path, tmp_path: Path) -> HeadNode:
    ssm = boto3.client("ssm", endpoint_url=moto_url, region_name=REGION)
    env = {
        "PATH": f"{fake_bin}:/usr/bin:/bin",
        "HPCB_AGENT_LOCK": str(tmp_path / "agent.lock"),
        "HOME": str(tmp_path),
        "SLURM_CONF": str(tmp_path / "slurm.conf"),
    }
    return HeadNode(ssm=ssm, env=env, state_dir=tmp_path)


@pytest.fixture
def staging(moto_url: str, head: HeadNode) -> str:
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name=REGION)
    bucket = f"hpcb-staging-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    head.s3, head.bucket = s3, bucket
    return bucket


def runner(head: HeadNode, bucket: str | None = None, clock: FakeTime | None = None) -> SsmRunner:
    time = clock or FakeTime()
    return SsmRunner(
        head,
        head.s3 if bucket else None,
        bucket,
        timeout_seconds=60,
        poll_seconds=1,
        sleep=time.sleep,
        clock=time.clock,
    )


def submit(*specs: JobSpec, token: str | None = None) -> AgentRequest:
    jobs = [
        AgentJob.of(token or slurm_token(new_request_id()), spec, user=JOB_USER) for spec in specs
    ]
    return AgentRequest(op="submit", jobs=jobs)


def spec(script: str = "#!/bin/bash\necho hi\n", **options: Any) -> JobSpec:
    return JobSpec(script=script, **options)


def fetched_request(command: str) -> dict[str, Any]:
    found = COMMAND.fullmatch(command)
    assert found is not None
    return dict(json.loads(base64.b64decode(found["payload"])))


# ---- the command ------------------------------------------------------------------------------


def test_embedded_agent_is_the_repository_file_without_docstrings() -> None:
    # GIVEN the agent blob built at import / WHEN decompressed
    embedded = zlib.decompress(base64.b64decode(agent_b64())).decode()
    source = AGENT_PATH.read_text()
    # THEN it is hpcb_agent.py's own code: the same syntax tree once docstrings are dropped
    assert embedded.encode() == compact_agent(source)
    assert len(embedded) < len(source) * 0.8
    assert "exactly-once" not in embedded.lower()


def test_command_is_the_constant_template_around_base64_only(head: HeadNode) -> None:
    # GIVEN a job whose script and name are distinctive, shell-hostile text
    script = "#!/bin/bash\necho SCRIPT-MARKER $(touch /tmp/pwned) '; rm -rf /' `id`\n"
    request = submit(spec(script, name="NAME-MARKER", partition="compute"))
    # WHEN sent through SSM
    runner(head).run(TARGET, request)
    # THEN the command (as moto received it) is the template with two base64 strings only
    (command,) = head.sent
    assert COMMAND.fullmatch(command)
    for text in ("SCRIPT-MARKER", "NAME-MARKER", "compute", "rm -rf", "$(touch", "hpcb:r"):
        assert text not in command


def test_send_command_uses_run_shell_script_with_timeouts(head: HeadNode) -> None:
    # GIVEN a runner with a 60 s timeout / WHEN pinging
    runner(head).run(TARGET, AgentRequest(op="ping"))
    # THEN moto recorded AWS-RunShellScript with the execution timeout and a comment
    command = ssm_backends[ACCOUNT][REGION]._commands[-1]
    assert command.document_name == "AWS-RunShellScript"
    assert command.parameters["executionTimeout"] == ["60"]
    assert command.comment == "hpc-broker ping"
    assert command.instance_ids == [INSTANCE_ID]


# ---- success paths ------------------------------------------------------------------------------


def test_ping_answer_is_decoded(head: HeadNode) -> None:
    # GIVEN a head node with python3 and sbatch / WHEN pinged
    response = runner(head).run(TARGET, AgentRequest(op="ping"))
    # THEN the agent's answer, from the head node's interpreter
    assert response.ok
    assert response.info["sbatch"] == "slurm-wlm 22.05.8"
    assert response.info["python"].split(".")[:2] == head_node_python_version()


def head_node_python_version() -> list[str]:
    done = subprocess.run(
        [head_node_python(), "-c", "import platform;print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().split(".")[:2]


def test_submit_returns_the_new_job_id_and_script_reaches_sbatch_stdin(head: HeadNode) -> None:
    # GIVEN one job
    script = "#!/bin/bash\necho 'quoted' \"$(id)\"\n"
    request = submit(spec(script, name="j1"))
    # WHEN submitted through SSM
    response = runner(head).run(TARGET, request)
    # THEN a job id comes back and sbatch read the script unchanged from stdin
    assert response.ok
    assert response.results[0].job_id == "101"
    assert response.results[0].token == request.jobs[0].token
    assert head.submitted_scripts() == script


def test_second_delivery_of_the_same_token_is_reused(head: HeadNode) -> None:
    # GIVEN a job already submitted once
    token = slurm_token(new_request_id())
    first = runner(head).run(TARGET, submit(spec(), token=token))
    # WHEN the same request runs again (an SQS redelivery)
    second = runner(head).run(TARGET, submit(spec(), token=token))
    # THEN the same job id, marked reused, and sbatch ran once
    assert second.results[0].job_id == first.results[0].job_id
    assert second.results[0].reused
    assert (head.state_dir / "next").read_text().strip() == "101"


def test_rejection_comes_back_as_a_per_job_error(head: HeadNode) -> None:
    # GIVEN a job for a partition that does not exist / WHEN submitted
    response = runner(head).run(TARGET, submit(spec(partition="nope")))
    # THEN the answer carries Slurm's permanent rejection
    error = response.results[0].error
    assert error is not None
    assert error.code == "SCHEDULER_REJECTED"
    assert "invalid partition specified: nope" in error.message


def test_invocation_not_yet_visible_is_polled_again(head: HeadNode) -> None:
    # GIVEN GetCommandInvocation answering InvocationDoesNotExist twice after SendCommand
    head.missing_polls = 2
    clock = FakeTime()
    # WHEN pinging
    response = runner(head, clock=clock).run(TARGET, AgentRequest(op="ping"))
    # THEN the runner kept polling and got the answer on the third poll
    assert response.ok
    assert clock.now == 3


# ---- staging through S3 -------------------------------------------------------------------------


def big_script(size: int = 40_000) -> str:
    return "#!/bin/bash\n" + "# padding\n" * (size // 10)


def test_large_request_is_staged_in_s3_and_fetched_by_the_agent(
    head: HeadNode, staging: str
) -> None:
    # GIVEN a request too large for an inline command
    script = big_script()
    request = submit(spec(script))
    # WHEN run with a staging bucket
    response = runner(head, staging).run(TARGET, request)
    # THEN SSM carried a small fetch request whose URL points at the staged object
    (command,) = head.sent
    sent = fetched_request(command)
    assert sent["op"] == "fetch"
    assert f"/{staging}/payloads/" in sent["payload_url"]
    assert len(sent["payload_sha256"]) == 64  # the agent runs only bytes with this sha256
    assert len(command) < 32 * 1024
    # AND the object was in S3 when the command was sent, and is cleaned up afterwards
    (keys,) = head.staged_objects
    assert [key for key in keys if key.startswith("payloads/")]
    assert "Contents" not in head.s3.list_objects_v2(Bucket=staging, Prefix="payloads/")
    # AND the agent downloaded it and submitted the job with the full script
    assert response.results[0].job_id == "101"
    assert head.submitted_scripts() == script


def test_large_answer_is_read_back_from_s3(head: HeadNode, staging: str) -> None:
    # GIVEN a request whose answer exceeds the inline limit (many long rejection messages)
    specs = [spec(partition="noisy") for _ in range(30)]
    # WHEN run with a staging bucket
    response = runner(head, staging).run(TARGET, submit(*specs))
    # THEN stdout only had the staged marker and the full answer came from S3
    assert json.loads(head.stdouts[0])["staged"] is True
    assert not response.staged
    assert len(response.results) == 30
    assert all(r.error and r.error.code == "SCHEDULER_REJECTED" for r in response.results)


def test_large_request_without_bucket_is_too_large(head: HeadNode) -> None:
    # GIVEN no staging bucket / WHEN a request is too large to send inline
    with pytest.raises(PayloadTooLargeError):
        runner(head).run(TARGET, submit(spec(big_script())))
    # THEN nothing was sent
    assert head.sent == []


def test_large_answer_without_bucket_is_cut_and_transient(head: HeadNode) -> None:
    # GIVEN no staging bucket and an answer longer than SSM's 24,000-character stdout
    specs = [spec(partition="noisy") for _ in range(30)]
    # WHEN run
    with pytest.raises(TransientError) as caught:
        runner(head).run(TARGET, submit(*specs))
    # THEN a transient error says the output was truncated
    assert caught.value.code == "AGENT_OUTPUT_TRUNCATED"


# ---- statuses moto cannot produce ---------------------------------------------------------------


def answer_line(**fields: Any) -> str:
    return json.dumps({"v": 1, "ok": True, "op": "ping", **fields})


def test_failed_status_with_an_answer_uses_the_answer(head: HeadNode) -> None:
    # GIVEN a Failed invocation whose stdout is an agent answer (the agent crashed cleanly)
    head.outcome = "Failed"
    head.response_code = 70
    head.stdout = json.dumps(
        {"v": 1, "ok": False, "error": {"code": "AGENT_CRASHED", "message": "x", "transient": True}}
    )
    # WHEN run / THEN the agent's own error is returned
    response = runner(head).run(TARGET, AgentRequest(op="ping"))
    assert response.error is not None
    assert response.error.code == "AGENT_CRASHED"


def test_failed_without_python_is_permanent(head: HeadNode) -> None:
    # GIVEN a head node without python3 (exit 127)
    head.outcome, head.response_code = "Failed", 127
    head.stderr = "bash: line 1: python3: command not found"
    # WHEN run / THEN permanent: retrying cannot help
    with pytest.raises(PermanentError) as caught:
        runner(head).run(TARGET, AgentRequest(op="ping"))
    assert caught.value.code == "AGENT_NOT_RUNNABLE"


def test_failed_without_an_answer_is_transient(head: HeadNode) -> None:
    # GIVEN a Failed invocation with a traceback and no answer (e.g. killed by the OOM killer)
    head.outcome, head.response_code, head.stderr = "Failed", 137, "Killed"
    # WHEN run / THEN transient AGENT_FAILED
    with pytest.raises(TransientError) as caught:
        runner(head).run(TARGET, AgentRequest(op="ping"))
    assert caught.value.code == "AGENT_FAILED"


def test_success_with_output_at_the_limit_is_transient(head: HeadNode) -> None:
    # GIVEN stdout cut at exactly 24,000 characters
    head.outcome = "Success"
    head.stdout = answer_line(info={"pad": "x" * STDOUT_LIMIT})[:STDOUT_LIMIT]
    # WHEN run / THEN transient, with a message about truncation
    with pytest.raises(TransientError) as caught:
        runner(head).run(TARGET, AgentRequest(op="ping"))
    assert caught.value.code == "AGENT_OUTPUT_TRUNCATED"
    assert "24000" in caught.value.message


def test_success_with_non_json_output_is_transient(head: HeadNode) -> None:
    # GIVEN stdout that is not an answer / WHEN run / THEN transient AGENT_BAD_OUTPUT
    head.outcome, head.stdout = "Success", "Segmentation fault"
    with pytest.raises(TransientError) as caught:
        runner(head).run(TARGET, AgentRequest(op="ping"))
    assert caught.value.code == "AGENT_BAD_OUTPUT"


@pytest.mark.parametrize("status", ["TimedOut", "Execution Timed Out", "Delivery Timed Out"])
def test_timed_out_command_is_a_runner_timeout(head: HeadNode, status: str) -> None:
    # GIVEN SSM timing the command out / WHEN run / THEN RunnerTimeoutError (outcome unknown)
    head.outcome = status
    with pytest.raises(RunnerTimeoutError):
        runner(head).run(TARGET, AgentRequest(op="ping"))


def test_undeliverable_command_means_head_node_unreachable(head: HeadNode) -> None:
    # GIVEN a head node that cannot take the command / WHEN run / THEN transient
    head.outcome = "Undeliverable"
    with pytest.raises(TransientError) as caught:
        runner(head).run(TARGET, AgentRequest(op="ping"))
    assert caught.value.code == "HEAD_NODE_UNREACHABLE"


@pytest.mark.parametrize("status", ["Cancelled", "Terminated"])
def test_cancelled_command_is_transient(head: HeadNode, status: str) -> None:
    # GIVEN a command cancelled or terminated by SSM / WHEN run / THEN transient
    head.outcome = status
    with pytest.raises(TransientError) as caught:
        runner(head).run(TARGET, AgentRequest(op="ping"))
    assert caught.value.code == "SSM_COMMAND_ENDED"


@pytest.mark.parametrize("status", ["AccessDenied", "InvalidPlatform"])
def test_refused_command_is_permanent(head: HeadNode, status: str) -> None:
    # GIVEN SSM refusing to run the document there / WHEN run / THEN permanent
    head.outcome = status
    with pytest.raises(PermanentError) as caught:
        runner(head).run(TARGET, AgentRequest(op="ping"))
    assert caught.value.code == "SSM_COMMAND_REFUSED"


def test_command_in_progress_forever_times_out_at_the_deadline(head: HeadNode) -> None:
    # GIVEN a command that never finishes
    head.outcome = "InProgress"
    clock = FakeTime()
    # WHEN run with a 60 s timeout (plus 15 s grace)
    with pytest.raises(RunnerTimeoutError) as caught:
        runner(head, clock=clock).run(TARGET, AgentRequest(op="ping"))
    # THEN it gives up at the deadline, saying the outcome is unknown
    assert clock.now == 75
    assert "outcome unknown" in caught.value.message


# ---- SendCommand errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error", "broker_code"),
    [
        ("ThrottlingException", ThrottledError, "THROTTLED"),
        ("TooManyUpdates", ThrottledError, "THROTTLED"),
        ("InvalidInstanceId", TransientError, "HEAD_NODE_UNREACHABLE"),
        ("InternalServerError", TransientError, "AWS_UNAVAILABLE"),
        ("AccessDeniedException", PermanentError, "SSM_COMMAND_REFUSED"),
        ("InvalidDocument", PermanentError, "SSM_COMMAND_REFUSED"),
        ("UnsupportedPlatformType", PermanentError, "SSM_COMMAND_REFUSED"),
        ("MaxDocumentSizeExceeded", PayloadTooLargeError, "PAYLOAD_TOO_LARGE"),
        ("SomethingNew", PermanentError, "AWS_ERROR"),
    ],
)
def test_send_command_errors_map_to_broker_errors(
    head: HeadNode, code: str, error: type[Exception], broker_code: str
) -> None:
    # GIVEN SendCommand failing with an AWS error code
    head.send_error = code
    # WHEN run
    with pytest.raises(error) as caught:
        runner(head).run(TARGET, AgentRequest(op="ping"))
    # THEN the broker error class and code, chained to the ClientError
    assert getattr(caught.value, "code", None) == broker_code
    assert isinstance(caught.value.__cause__, ClientError)


def test_local_target_is_refused(head: HeadNode) -> None:
    # GIVEN a local-mode target / WHEN given to the SSM runner / THEN permanent mismatch
    with pytest.raises(PermanentError) as caught:
        runner(head).run(ClusterTarget(name="local", mode="local"), AgentRequest(op="ping"))
    assert caught.value.code == "RUNNER_MISMATCH"
