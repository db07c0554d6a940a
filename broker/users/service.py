"""The rules of the caller-to-user mapping: default deny, and administrators only.

The API asks :meth:`UserService.require` before it accepts a job, a batch, a cancel or an
output read; a caller with no mapping for that cluster gets ``NOT_MAPPED`` (403) and nothing is
recorded or queued. The user it answers is recorded with the request (and the job) and carried
in the queue message, so a worker never looks it up again, and never guesses.
"""

from __future__ import annotations

from collections.abc import Iterable

from broker.errors import NotFoundError
from broker.ports import UserStore
from broker.schema import utcnow
from broker.users.models import MappingBody, NotMappedError, UserMapping


class UserService:
    """Resolves callers to POSIX users per cluster; lets administrators manage the mappings.

    Args:
        store: the mappings (``UserStore``).
        admins: the IAM principals allowed to manage mappings (``HPCB_ADMIN_PRINCIPALS``).
    """

    def __init__(self, store: UserStore, admins: Iterable[str] = ()) -> None:
        self._store = store
        self._admins = frozenset(a for a in admins if a)

    def is_admin(self, principal: str) -> bool:
        """Whether ``principal`` may manage mappings (exact ARN match; none configured: nobody)."""
        return principal in self._admins

    def require(self, cluster: str, principal: str) -> str:
        """The POSIX user ``principal`` acts as on ``cluster``.

        Raises:
            NotMappedError: no mapping (403 ``NOT_MAPPED``), with whom to ask.
        """
        mapping = self._store.get_mapping(cluster, principal)
        if mapping is None:
            raise NotMappedError(self._not_mapped(cluster, principal))
        return mapping.user

    def _not_mapped(self, cluster: str, principal: str) -> str:
        contact = (
            f" ({', '.join(sorted(self._admins))})"
            if self._admins
            else " (AdminPrincipals of the broker's deployment)"
        )
        return (
            f"{principal} has no user on cluster {cluster}: the broker runs nothing on a cluster "
            f"for a caller it has not mapped to a POSIX user there. Ask the broker's "
            f"administrator{contact} to map you"
        )

    def map(self, cluster: str, principal: str, body: MappingBody, *, by: str) -> UserMapping:
        """Write (or replace) ``principal``'s user on ``cluster``; return the mapping."""
        mapping = UserMapping(
            cluster=cluster, principal=principal, user=body.user, uid=body.uid,
            created_at=utcnow(), created_by=by,
        )  # fmt: skip
        self._store.put_mapping(mapping)
        return mapping

    def get(self, cluster: str, principal: str) -> UserMapping:
        """``principal``'s mapping on ``cluster``. Raises NotFoundError."""
        mapping = self._store.get_mapping(cluster, principal)
        if mapping is None:
            raise NotFoundError(f"{principal} has no user on cluster {cluster}")
        return mapping

    def unmap(self, cluster: str, principal: str) -> UserMapping:
        """Remove ``principal``'s mapping on ``cluster``; return what it was.

        Jobs accepted before keep the user recorded with them (a cancel or output read of
        them is refused once the caller is no longer mapped).

        Raises:
            NotFoundError: there was none.
        """
        removed = self._store.delete_mapping(cluster, principal)
        if removed is None:
            raise NotFoundError(f"{principal} has no user on cluster {cluster}")
        return removed

    def list(
        self, cluster: str, *, limit: int, next_token: str | None
    ) -> tuple[list[UserMapping], str | None]:
        """A page of ``cluster``'s mappings, by principal."""
        return self._store.list_mappings(cluster, limit=limit, next_token=next_token)
