"""Command runners: implementations of the ``CommandRunner`` port that run the head-node agent.

``local`` runs it as a subprocess on this machine (local mode, tests); ``ssm`` sends it to a
ParallelCluster head node through AWS Systems Manager Run Command.
"""

from __future__ import annotations

from pathlib import Path

#: The agent's source file: the one file that runs on head nodes (stdlib only, Python 3.7+).
AGENT_PATH = Path(__file__).resolve().parent.parent / "agent" / "hpcb_agent.py"
