"""The sweep: the scheduled pass that keeps records true without any client polling Slurm.

Owns the status sweep, one head-node command per cluster with active jobs (``status``), what a
pass did (``report``), following accepted cluster operations with stack reads (``clusters``),
and the repairs of accepts cut short: lost messages re-sent, lost batch chunks failed
(``repairs``).
"""
