"""Contract: our ClusterProvider adapter against the REAL ParallelCluster library (``pcluster.lib``
3.16.1, its own environment: ``make contract``), for what runs without an AWS account.

- a configuration pcluster's own schema refuses comes back as ConfigurationRejectedError with its
  findings (permanent), whatever our models accepted;
- a dry run reaches pcluster's "Request would have succeeded" against the moto server (a moto AMI
  as Image.CustomAmi, a moto subnet, validators suppressed: they call AWS APIs moto lacks);
- pcluster's errors map to ours: an unknown cluster is CLUSTER_NOT_FOUND (permanent), an
  unreachable AWS endpoint is transient.
"""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest

from broker.adapters.pcluster import PclusterProvider
from broker.clusters import ConfigurationRejectedError
from broker.clusters.models import ClusterMessage
from broker.errors import ClusterNotFoundError, TransientError

pc = pytest.importorskip("pcluster.lib", reason="needs the contract environment (make contract)")
REGION = "us-east-1"


@pytest.fixture
def provider(moto_url: str) -> Iterator[PclusterProvider]:
    from pcluster.aws.aws_api import AWSApi  # noqa: PLC0415 - only in the contract environment

    AWSApi.reset()  # pcluster caches its boto3 clients (and their endpoint) process-wide
    yield PclusterProvider(default_region=REGION)
    AWSApi.reset()


@pytest.fixture
def network(moto_url: str) -> tuple[str, str]:
    """A moto AMI and subnet for a configuration pcluster accepts."""
    ec2 = boto3.client("ec2", region_name=REGION)
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    return ami, subnet


def configuration(ami: str, subnet: str, max_count: int = 2) -> str:
    return f"""Image:
  Os: alinux2023
  CustomAmi: {ami}
HeadNode:
  InstanceType: t3.micro
  Networking:
    SubnetId: {subnet}
Scheduling:
  Scheduler: slurm
  SlurmQueues:
  - Name: q1
    ComputeResources:
    - Name: cr1
      InstanceType: t3.micro
      MinCount: 0
      MaxCount: {max_count}
    Networking:
      SubnetIds: [{subnet}]
"""


def create(text: str, *, dryrun: bool = True) -> ClusterMessage:
    return ClusterMessage(
        kind="cluster.create",
        request_id="r0000000000000000000000000001",
        owner="arn:aws:iam::123456789012:user/alice",
        cluster="contract",
        configuration=text,
        dryrun=dryrun,
        suppress_validators=["ALL"],
    )


def test_a_configuration_pclusters_schema_refuses_is_rejected_with_its_findings(
    provider: PclusterProvider, network: tuple[str, str]
) -> None:
    # GIVEN a configuration whose compute resource has MaxCount -3 (our models do not read YAML)
    text = configuration(*network, max_count=-3)
    # WHEN created through the adapter on the real pcluster.lib
    with pytest.raises(ConfigurationRejectedError) as rejected:
        provider.create(create(text))
    # THEN it is refused for good, with pcluster's schema finding naming the field
    assert not rejected.value.transient
    (finding,) = rejected.value.validation_messages
    assert (finding.level, finding.type) == ("ERROR", "ConfigSchemaValidator")
    assert "MaxCount" in finding.message


def test_an_unknown_operating_system_is_rejected_listing_the_choices(
    provider: PclusterProvider, network: tuple[str, str]
) -> None:
    # GIVEN Amazon Linux 2, which ParallelCluster 3.16 no longer supports
    text = configuration(*network).replace("alinux2023", "alinux2")
    # WHEN created / THEN refused, and the finding lists what pcluster accepts
    with pytest.raises(ConfigurationRejectedError) as rejected:
        provider.create(create(text))
    assert "alinux2023" in rejected.value.validation_messages[0].message


def test_a_dry_run_of_a_valid_configuration_would_have_succeeded(
    provider: PclusterProvider, network: tuple[str, str]
) -> None:
    # GIVEN a configuration pcluster accepts, on moto's AMI and subnet
    text = configuration(*network)
    # WHEN created as a dry run
    answer = provider.create(create(text))
    # THEN pcluster's dry-run success comes back as an answer, not an error
    assert answer.dryrun
    assert answer.message is not None
    assert "would have succeeded" in answer.message


def test_operations_on_an_unknown_cluster_are_cluster_not_found(
    provider: PclusterProvider,
) -> None:
    # GIVEN no cluster named "nope" / WHEN described, deleted, or its fleet stopped
    for operation in (
        lambda: provider.describe("nope", None),
        lambda: provider.delete("nope", None),
        lambda: provider.update_compute_fleet("nope", "STOP_REQUESTED", None),
    ):
        # THEN each is CLUSTER_NOT_FOUND, permanent
        with pytest.raises(ClusterNotFoundError) as missing:
            operation()
        assert not missing.value.transient
    # AND the listing is empty
    assert provider.list(None) == []


def test_an_unreachable_aws_endpoint_is_a_transient_error(
    provider: PclusterProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN AWS unreachable (nothing listens on port 1)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    # WHEN a cluster is described / THEN the error is transient (the worker retries it)
    with pytest.raises(TransientError):
        provider.describe("contract", None)


def test_the_contract_environment_is_the_pinned_one() -> None:
    # GIVEN the contract environment / THEN it runs the pcluster version the adapter was read from
    from importlib.metadata import version  # noqa: PLC0415

    assert version("aws-parallelcluster") == "3.16.1"
