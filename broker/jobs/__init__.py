"""Jobs: one Slurm job from its accept to its end.

Owns the job record and its ordered states with the one Slurm -> broker state table
(``records``), the API's accept of job writes and reads (``accept``), the job worker's run of a
queued request on the head node (``dispatch``, with ``execution`` for what every agent call
shares) and the dead-letter worker's end of a request whose retries ran out (``dead_letters``).

Import from the modules (the package re-exports nothing, so that importing
``broker.jobs.models`` does not run the records, which need the agent's protocol).
"""
