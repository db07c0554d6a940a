"""Jobs: one Slurm job from its accept to its end.

Owns the job record and its ordered states with the one Slurm -> broker state table
(``records``), the API's accept of job writes and reads (``accept``), the job worker's run of a
queued request on the head node (``dispatch``, with ``execution`` for what every agent call
shares) and the dead-letter worker's end of a request whose retries ran out (``dead_letters``).

The package exposes the record-level names (states, records, views, the pure Slurm rules);
import services from their modules.
"""

from broker.jobs.records import (
    EXIT_CODE_WAIT_SECONDS,
    SLURM_STATES,
    JobList,
    JobRecord,
    JobState,
    JobView,
    Observation,
    TaskStatus,
    advances,
    array_indexes,
    from_slurm,
    new_job,
    observe,
)

__all__ = [
    "EXIT_CODE_WAIT_SECONDS",
    "SLURM_STATES",
    "JobList",
    "JobRecord",
    "JobState",
    "JobView",
    "Observation",
    "TaskStatus",
    "advances",
    "array_indexes",
    "from_slurm",
    "new_job",
    "observe",
]
