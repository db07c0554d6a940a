"""Resolving a caller's POSIX user (every job write, API and worker) and administering the
mappings (the admin API and the local command)."""

from __future__ import annotations

import time
from collections.abc import Callable

from broker.errors import NotFoundError, NotMappedError
from broker.ports import UserMappings
from broker.schema import utcnow
from broker.users.models import MappingBody, UserMapping


class MappedUsers:
    """``UserResolver`` over the broker's mappings: default deny, no fallback user.

    Args:
        mappings: the store.
        contact: whom a refused caller should ask (shown in the 403's message).
        cache_seconds: how long an answer is remembered (0: never; the API reads afresh, and
            workers never ask: they act as the user recorded with the job). A mapping
            removed meanwhile stops applying after at most that long.
        clock: monotonic clock (tests).
    """

    def __init__(
        self,
        mappings: UserMappings,
        *,
        contact: str | None = None,
        cache_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._mappings = mappings
        self._contact = contact
        self._ttl = cache_seconds
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, str | None]] = {}

    def user_for(self, cluster: str, owner: str) -> str:
        """The POSIX user ``owner`` acts as on ``cluster``.

        Raises:
            NotMappedError: ``owner`` has no user on ``cluster``.
        """
        key, now = (cluster, owner), self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            user = cached[1]
        else:
            mapping = self._mappings.get_mapping(cluster, owner)
            user = None if mapping is None else mapping.user
            if self._ttl > 0:
                self._cache[key] = (now + self._ttl, user)
        if user is None:
            ask = f" ({self._contact})" if self._contact else ""
            raise NotMappedError(
                f"you have no user on cluster {cluster}: ask the broker's administrator{ask} "
                "to map you to your cluster user"
            )
        return user


class UserAdmin:
    """The mappings of a cluster, for administrators (``broker.api.admin``)."""

    def __init__(self, mappings: UserMappings) -> None:
        self._mappings = mappings

    def put(self, admin: str, cluster: str, body: MappingBody) -> UserMapping:
        """Map ``body.principal`` on ``cluster`` to ``body.user`` (replacing any mapping)."""
        mapping = UserMapping(
            cluster=cluster, principal=body.principal, user=body.user, uid=body.uid,
            created_at=utcnow(), created_by=admin,
        )  # fmt: skip
        self._mappings.put_mapping(mapping)
        return mapping

    def get(self, cluster: str, principal: str) -> UserMapping:
        """One mapping. Raises NotFoundError if none."""
        mapping = self._mappings.get_mapping(cluster, principal)
        if mapping is None:
            raise NotFoundError(f"{principal} has no user on cluster {cluster}")
        return mapping

    def delete(self, cluster: str, principal: str) -> None:
        """Remove one mapping. Raises NotFoundError if none."""
        if not self._mappings.delete_mapping(cluster, principal):
            raise NotFoundError(f"{principal} has no user on cluster {cluster}")

    def list(
        self, cluster: str, *, limit: int, next_token: str | None
    ) -> tuple[list[UserMapping], str | None]:
        """A page of the cluster's mappings."""
        return self._mappings.list_mappings(cluster, limit=limit, next_token=next_token)
