"""Ec2ClusterDirectory against moto EC2 over real HTTP, and LocalClusterDirectory."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from broker.adapters.ec2 import Ec2ClusterDirectory
from broker.adapters.local_directory import LocalClusterDirectory
from broker.errors import ClusterNotFoundError, PermanentError, ThrottledError
from broker.ports import ClusterTarget

REGION = "us-east-1"
AMI = "ami-12c6146b"  # one of moto's default AMIs


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingEc2:
    """Wraps the EC2 client: counts DescribeInstances pages; can fail with an injected code."""

    def __init__(self, ec2: Any, error: str | None = None) -> None:
        self.ec2 = ec2
        self.error = error
        self.calls = 0

    def get_paginator(self, name: str) -> Any:
        outer = self
        paginator = self.ec2.get_paginator(name)

        class Counting:
            def paginate(self, **kwargs: Any) -> Any:
                outer.calls += 1
                if outer.error:
                    raise ClientError({"Error": {"Code": outer.error, "Message": "x"}}, name)
                return paginator.paginate(**kwargs)

        return Counting()


@pytest.fixture
def ec2(moto_url: str) -> Any:
    return boto3.client("ec2", endpoint_url=moto_url, region_name=REGION)


@pytest.fixture
def cluster() -> str:
    # Unique per test: moto's state is shared by the whole session.
    return f"c{uuid.uuid4().hex[:10]}"


def launch(ec2: Any, cluster: str, node_type: str = "HeadNode", *, stack: str | None = "") -> str:
    """A running instance tagged as ParallelCluster tags its nodes, launched by the stack
    ``stack`` (default: the cluster's own; None: by hand, without CloudFormation's tags)."""
    tags = [
        {"Key": "parallelcluster:cluster-name", "Value": cluster},
        {"Key": "parallelcluster:node-type", "Value": node_type},
    ]
    if stack is not None:
        # Only CloudFormation can set aws: tags in AWS; moto lets the test stand in for it.
        tags.append({"Key": "aws:cloudformation:stack-name", "Value": stack or cluster})
    reservation = ec2.run_instances(
        ImageId=AMI,
        MinCount=1,
        MaxCount=1,
        InstanceType="t3.micro",
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )
    return str(reservation["Instances"][0]["InstanceId"])


def test_running_head_node_resolves_to_an_ssm_target(ec2: Any, cluster: str) -> None:
    # GIVEN a cluster with a head node and a compute node
    head = launch(ec2, cluster)
    launch(ec2, cluster, node_type="Compute")
    # WHEN resolved
    target = Ec2ClusterDirectory(ec2).resolve(cluster)
    # THEN the head node, reached through SSM
    assert target == ClusterTarget(name=cluster, mode="ssm", instance_id=head)


def test_an_instance_tagged_by_hand_as_the_head_node_is_not_the_head_node(
    ec2: Any, cluster: str
) -> None:
    # GIVEN instances carrying the cluster's parallelcluster: tags, but not launched by the
    # cluster's stack: one tagged by hand, one launched by another stack
    launch(ec2, cluster, stack=None)
    launch(ec2, cluster, stack="someone-elses-stack")
    # WHEN resolving the cluster / THEN neither is taken for its head node
    with pytest.raises(ClusterNotFoundError):
        Ec2ClusterDirectory(ec2).resolve(cluster)


def test_unknown_cluster_is_not_found(ec2: Any, cluster: str) -> None:
    # GIVEN no instances tagged with the name / WHEN resolved / THEN not found
    with pytest.raises(ClusterNotFoundError):
        Ec2ClusterDirectory(ec2).resolve(cluster)


def test_stopped_head_node_is_ignored(ec2: Any, cluster: str) -> None:
    # GIVEN a cluster whose only head node is stopped
    ec2.stop_instances(InstanceIds=[launch(ec2, cluster)])
    # WHEN resolved / THEN not found
    with pytest.raises(ClusterNotFoundError):
        Ec2ClusterDirectory(ec2).resolve(cluster)


def test_newest_of_two_running_head_nodes_wins(cluster: str) -> None:
    # GIVEN two running head nodes (a replacement in progress), the newest listed first
    pages = [
        {
            "Reservations": [
                {
                    "Instances": [
                        {"InstanceId": "i-new", "LaunchTime": datetime(2026, 3, 1, tzinfo=UTC)}
                    ]
                },
                {
                    "Instances": [
                        {"InstanceId": "i-old", "LaunchTime": datetime(2026, 1, 1, tzinfo=UTC)}
                    ]
                },
            ]
        }
    ]
    # WHEN resolved
    target = Ec2ClusterDirectory(_StaticEc2(pages)).resolve(cluster)
    # THEN the most recently launched one
    assert target.instance_id == "i-new"


def test_two_moto_head_nodes_resolve_to_one_of_them(ec2: Any, cluster: str) -> None:
    # GIVEN two running head nodes in moto / WHEN resolved / THEN one of them, no error
    both = {launch(ec2, cluster), launch(ec2, cluster)}
    assert Ec2ClusterDirectory(ec2).resolve(cluster).instance_id in both


def test_found_head_node_is_cached_until_the_ttl(ec2: Any, cluster: str) -> None:
    # GIVEN a resolved cluster and a 60 s cache
    launch(ec2, cluster)
    counting, clock = CountingEc2(ec2), Clock()
    directory = Ec2ClusterDirectory(counting, cache_seconds=60, clock=clock)
    directory.resolve(cluster)
    # WHEN resolved again within and after the TTL
    clock.now += 59
    directory.resolve(cluster)
    calls_within = counting.calls
    clock.now += 2
    directory.resolve(cluster)
    # THEN EC2 was asked once within the TTL and again after it
    assert calls_within == 1
    assert counting.calls == 2


def test_not_found_is_cached_for_a_shorter_time(ec2: Any, cluster: str) -> None:
    # GIVEN an unknown cluster, looked up once
    counting, clock = CountingEc2(ec2), Clock()
    directory = Ec2ClusterDirectory(counting, cache_seconds=60, clock=clock)
    with pytest.raises(ClusterNotFoundError):
        directory.resolve(cluster)
    # WHEN the head node appears and 11 s pass
    head = launch(ec2, cluster)
    clock.now += 11
    # THEN the new head node is found (the negative answer expired after 10 s)
    assert directory.resolve(cluster).instance_id == head
    assert counting.calls == 2


def test_invalid_cluster_name_is_not_found_without_calling_ec2(ec2: Any) -> None:
    # GIVEN a name ParallelCluster would never accept / WHEN resolved / THEN no EC2 call
    counting = CountingEc2(ec2)
    with pytest.raises(ClusterNotFoundError):
        Ec2ClusterDirectory(counting).resolve("bad name*")
    assert counting.calls == 0


@pytest.mark.parametrize(
    ("code", "error"),
    [("RequestLimitExceeded", ThrottledError), ("UnauthorizedOperation", PermanentError)],
)
def test_ec2_errors_map_to_broker_errors(
    ec2: Any, cluster: str, code: str, error: type[Exception]
) -> None:
    # GIVEN DescribeInstances failing / WHEN resolving / THEN the broker error, chained
    with pytest.raises(error) as caught:
        Ec2ClusterDirectory(CountingEc2(ec2, error=code)).resolve(cluster)
    assert isinstance(caught.value.__cause__, ClientError)


def test_local_directory_resolves_known_names_to_local_targets() -> None:
    # GIVEN local clusters "local" and "dev" / WHEN resolving "dev" / THEN a local target
    directory = LocalClusterDirectory(frozenset({"local", "dev"}))
    assert directory.resolve("dev") == ClusterTarget(name="dev", mode="local")


def test_local_directory_does_not_know_other_names() -> None:
    # GIVEN local clusters / WHEN resolving another name / THEN not found
    with pytest.raises(ClusterNotFoundError):
        LocalClusterDirectory(frozenset({"local"})).resolve("prod")


class _StaticEc2:
    def __init__(self, pages: list[dict[str, Any]]) -> None:
        self.pages = pages

    def get_paginator(self, name: str) -> Any:
        pages = self.pages

        class Static:
            def paginate(self, **kwargs: Any) -> Any:
                return iter(pages)

        return Static()
