"""Users: which POSIX user a caller acts as on each cluster (issue 12, "run as the caller").

Owns the mapping record and the admin body (``models``) and the rules (``service``): default
deny (a caller with no mapping for a cluster gets 403 ``NOT_MAPPED``), mappings managed by the
administrators named in ``HPCB_ADMIN_PRINCIPALS`` only. There is no default user and no fallback:
the user a job runs as is the one recorded with it when it was accepted.
"""

from broker.users.models import (
    PRINCIPAL_PATTERN,
    MappingBody,
    NotMappedError,
    UserMapping,
    UserMappingList,
)

__all__ = ["PRINCIPAL_PATTERN", "MappingBody", "NotMappedError", "UserMapping", "UserMappingList"]
