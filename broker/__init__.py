"""hpc-broker: a queue-backed asynchronous broker for ParallelCluster clusters and Slurm jobs."""

__version__ = "0.1.0"
