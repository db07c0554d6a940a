"""Who runs as whom: each caller's POSIX user on each cluster, kept by the broker and managed by
administrators (``broker.api.admin``, ``python -m broker.local users``). Default deny: a caller
with no mapping for a cluster reaches nothing on it (``NOT_MAPPED``, 403)."""
