"""Run the head-node agent on this machine, as a subprocess (``ClusterTarget(mode="local")``)."""

from __future__ import annotations

import subprocess
import sys
import tempfile

from broker.agent.protocol import AgentRequest, AgentResponse, decode_response, encode_request
from broker.errors import PermanentError, RunnerTimeoutError, TransientError
from broker.ports import ClusterTarget
from broker.runners import AGENT_PATH

#: Payloads longer than this go through stdin: Linux caps one argv string at 128 KiB
#: (MAX_ARG_STRLEN), and argv is visible to every local user in ``ps`` anyway.
ARGV_PAYLOAD_LIMIT = 100 * 1024


class LocalRunner:
    """Runs ``python hpcb_agent.py <payload>`` locally; implements ``CommandRunner``.

    The child inherits this process's environment (``SLURM_CONF``, ``PATH``, ``HPCB_AGENT_LOCK``).

    Args:
        python: interpreter for the agent (default: the current one).
        timeout: seconds the agent may take before the outcome counts as unknown.
    """

    def __init__(self, python: str | None = None, timeout: float = 120) -> None:
        self._python = python or sys.executable
        self._timeout = timeout

    def run(self, target: ClusterTarget, request: AgentRequest) -> AgentResponse:
        """Run the agent with one request and return its answer.

        Raises:
            RunnerTimeoutError: the agent did not finish in time (outcome unknown).
            TransientError: the agent's output is not an answer (it crashed).
            PermanentError: wrong target mode, or the interpreter cannot be started.
        """
        if target.mode != "local":
            raise PermanentError(
                f"LocalRunner cannot reach cluster {target.name!r} (mode {target.mode})",
                code="RUNNER_MISMATCH",
            )
        payload = encode_request(request)
        if len(payload) > ARGV_PAYLOAD_LIMIT:
            argv, stdin = [self._python, str(AGENT_PATH), "-"], payload.encode("ascii")
        else:
            argv, stdin = [self._python, str(AGENT_PATH), payload], b""
        try:
            # A fixed cwd, as SSM gives the agent its own: the caller's (e.g. a repository
            # checkout) must never receive sbatch's default slurm-<id>.out files.
            completed = subprocess.run(
                argv,
                input=stdin,
                capture_output=True,
                timeout=self._timeout,
                check=False,
                cwd=tempfile.gettempdir(),
            )
        except subprocess.TimeoutExpired as exc:
            raise RunnerTimeoutError(
                f"the local agent did not answer within {self._timeout:g} s"
            ) from exc
        except OSError as exc:
            raise PermanentError(
                f"cannot start the local agent with {self._python!r}: {exc}",
                code="AGENT_NOT_RUNNABLE",
            ) from exc
        stdout = completed.stdout.decode("utf-8", "replace")
        try:
            return decode_response(stdout)
        except TransientError as exc:
            stderr = completed.stderr.decode("utf-8", "replace").strip()[-500:]
            raise TransientError(
                f"{exc.message} (exit status {completed.returncode}; stderr: {stderr!r})",
                code=exc.code,
            ) from exc
