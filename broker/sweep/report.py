"""What one sweep did: logged, and asserted on by tests and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SweepReport:
    """What one sweep did (logged, and asserted on by tests and benchmarks)."""

    clusters: int = 0
    head_node_commands: int = 0
    active_jobs: int = 0
    transitions: int = 0
    field_updates: int = 0
    announced: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    accounting: dict[str, bool | None] = field(default_factory=dict)
    clusters_followed: int = 0
    stack_reads: int = 0
    cluster_transitions: int = 0
    requeued: int = 0
    chunks_lost: int = 0
    items_lost: int = 0
