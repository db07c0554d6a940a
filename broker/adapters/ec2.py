"""Find a cluster's head node by the tags ParallelCluster puts on its instances."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from broker.adapters.aws import translate
from broker.errors import ClusterNotFoundError
from broker.ports import ClusterTarget

#: ParallelCluster's cluster-name rule (same as ``broker.schema.ClusterName``).
_CLUSTER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,59}$")
#: A cluster that does not exist is looked up again sooner than a found one is: it may be
#: being created right now.
NEGATIVE_CACHE_SECONDS = 10.0


class Ec2ClusterDirectory:
    """``ClusterDirectory`` over EC2: a cluster is the running instance tagged as its head node.

    ParallelCluster 3 tags the head node ``parallelcluster:cluster-name=<name>`` and
    ``parallelcluster:node-type=HeadNode``, and CloudFormation, which launches it as part of the
    cluster's stack (named as the cluster), tags it ``aws:cloudformation:stack-name=<name>``.
    All three must match: anyone allowed ``ec2:CreateTags`` can copy the ``parallelcluster:``
    tags onto an instance of theirs, but nobody can set an ``aws:`` tag, so only the instance of
    the cluster's own stack can receive the broker's commands. Answers are cached per cluster for
    ``cache_seconds`` (not-found answers for at most ``NEGATIVE_CACHE_SECONDS``), so a busy
    worker does not call DescribeInstances for every message.

    Args:
        ec2_client: a boto3 EC2 client.
        cache_seconds: how long a found head node is remembered.
        clock: monotonic clock (injected for tests).
    """

    def __init__(
        self,
        ec2_client: Any,
        cache_seconds: float = 60,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ec2 = ec2_client
        self._ttl = cache_seconds
        self._negative_ttl = min(cache_seconds, NEGATIVE_CACHE_SECONDS)
        self._clock = clock
        self._cache: dict[str, tuple[float, ClusterTarget | None]] = {}

    def resolve(self, cluster: str) -> ClusterTarget:
        """Return the head node of ``cluster`` (``mode="ssm"``).

        Raises:
            ClusterNotFoundError: no running head node carries that cluster name.
            ThrottledError: EC2 asked us to slow down.
            TransientError: EC2 could not be reached.
            PermanentError: any other EC2 error (e.g. missing permission).
        """
        if not _CLUSTER_NAME.match(cluster):
            raise ClusterNotFoundError(f"no cluster named {cluster!r}")
        now = self._clock()
        cached = self._cache.get(cluster)
        if cached is not None and cached[0] > now:
            return _found_or_raise(cluster, cached[1])
        target = self._lookup(cluster)
        ttl = self._ttl if target is not None else self._negative_ttl
        self._cache[cluster] = (now + ttl, target)
        return _found_or_raise(cluster, target)

    def _lookup(self, cluster: str) -> ClusterTarget | None:
        filters = [
            {"Name": "tag:aws:cloudformation:stack-name", "Values": [cluster]},
            {"Name": "tag:parallelcluster:cluster-name", "Values": [cluster]},
            {"Name": "tag:parallelcluster:node-type", "Values": ["HeadNode"]},
            {"Name": "instance-state-name", "Values": ["running"]},
        ]
        instances: list[dict[str, Any]] = []
        try:
            for page in self._ec2.get_paginator("describe_instances").paginate(Filters=filters):
                for reservation in page.get("Reservations", []):
                    instances.extend(reservation.get("Instances", []))
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"look up the head node of cluster {cluster!r}") from exc
        if not instances:
            return None
        # During an update or a replacement two head nodes may run for a while: take the newest.
        newest = max(instances, key=_launch_time)
        return ClusterTarget(name=cluster, mode="ssm", instance_id=str(newest["InstanceId"]))


def _launch_time(instance: dict[str, Any]) -> datetime:
    launched = instance.get("LaunchTime")
    if isinstance(launched, datetime):
        return launched if launched.tzinfo else launched.replace(tzinfo=UTC)
    return datetime.min.replace(tzinfo=UTC)


def _found_or_raise(cluster: str, target: ClusterTarget | None) -> ClusterTarget:
    if target is None:
        raise ClusterNotFoundError(f"no cluster named {cluster!r}")
    return target
