"""``python -m broker.check``: each step of checking a connected cluster, and where it stops."""

from __future__ import annotations

import io

from broker.agent.protocol import AgentErrorInfo, AgentRequest, AgentResponse
from broker.check import check
from broker.errors import ClusterNotFoundError
from broker.ports import ClusterTarget

HEAD = ClusterTarget(name="demo", mode="ssm", instance_id="i-0123456789abcdef0")


class Agent:
    """Answers ping and status as scripted."""

    def __init__(self, ping: AgentResponse, status: AgentResponse | None = None) -> None:
        self.answers = {"ping": ping, "status": status}
        self.asked: list[str] = []

    def run(self, target: ClusterTarget, request: AgentRequest) -> AgentResponse:
        self.asked.append(request.op)
        answer = self.answers[request.op]
        assert answer is not None
        return answer


PONG = AgentResponse(ok=True, op="ping", info={"agent_version": "1.0.0", "python": "3.9.16",
                                               "sbatch": "slurm 23.11.4"})  # fmt: skip
SLURM_UP = AgentResponse(ok=True, op="status", missing=["1"], accounting=True)


def run(find: object, agent: Agent) -> tuple[bool, str]:
    out = io.StringIO()
    ok = check("demo", find, agent, out)  # type: ignore[arg-type]
    return ok, out.getvalue()


def test_a_connected_cluster_passes_the_three_steps() -> None:
    ok, text = run(lambda name: HEAD, Agent(PONG, SLURM_UP))
    assert ok
    assert [line.split()[0] for line in text.splitlines()] == ["ok", "ok", "ok"]
    assert "i-0123456789abcdef0" in text
    assert "sbatch slurm 23.11.4" in text
    assert "accounting (sacct): yes" in text


def test_no_head_node_stops_at_the_first_step() -> None:
    def find(name: str) -> ClusterTarget:
        raise ClusterNotFoundError(f"no running head node for cluster {name}")

    agent = Agent(PONG, SLURM_UP)
    ok, text = run(find, agent)
    assert not ok
    assert text.splitlines() == [
        "FAIL  head node found: CLUSTER_NOT_FOUND: no running head node for cluster demo"
    ]
    assert agent.asked == []


def test_an_agent_that_cannot_run_stops_at_the_second() -> None:
    error = AgentErrorInfo(code="SSM_UNDELIVERED", message="the instance is not managed by SSM",
                           transient=True)  # fmt: skip
    failed = AgentResponse(ok=False, op="ping", error=error)
    ok, text = run(lambda name: HEAD, Agent(failed))
    assert not ok
    assert text.splitlines()[-1] == (
        "FAIL  SSM reaches it, the agent runs: SSM_UNDELIVERED: the instance is not managed by SSM"
    )


def test_a_controller_that_does_not_answer_stops_at_the_third() -> None:
    error = AgentErrorInfo(code="SCHEDULER_UNAVAILABLE", message="squeue: connect failure",
                           transient=True)  # fmt: skip
    down = AgentResponse(ok=False, op="status", error=error)
    ok, text = run(lambda name: HEAD, Agent(PONG, down))
    assert not ok
    assert text.splitlines()[-1].startswith("FAIL  Slurm answers: SCHEDULER_UNAVAILABLE")
