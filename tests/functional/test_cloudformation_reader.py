"""The sweep's CloudFormation path against moto: stacks made with ParallelCluster's tags.

moto creates a trivial template at once (CREATE_COMPLETE); the statuses of a cluster operation
in flight or failed are set on moto's own stack objects (the server runs in this process).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from moto.cloudformation.models import Event, cloudformation_backends

from broker.adapters.aws import client
from broker.adapters.cloudformation import CloudFormationStackReader
from broker.clusters import ClusterStatus
from broker.errors import PermanentError
from tests.conftest import ACCOUNT, REGION, AwsResources

TEMPLATE = json.dumps(
    {
        "Resources": {
            "HeadNodeWaitConditionHandle": {"Type": "AWS::CloudFormation::WaitConditionHandle"}
        }
    }
)
PCLUSTER_TAGS = [
    {"Key": "parallelcluster:version", "Value": "3.16.1"},
    {"Key": "parallelcluster:cluster-name", "Value": "alpha"},
]


@pytest.fixture
def reader(aws_resources: AwsResources) -> CloudFormationStackReader:
    return CloudFormationStackReader(lambda region: client("cloudformation"))


def make_stack(name: str = "alpha", tags: list[dict[str, str]] | None = None) -> str:
    answer = client("cloudformation").create_stack(
        StackName=name, TemplateBody=TEMPLATE, Tags=PCLUSTER_TAGS if tags is None else tags
    )
    return str(answer["StackId"])


def moto_stack(name: str) -> Any:
    return cloudformation_backends[ACCOUNT][REGION].get_stack(name)


def fail_resource(stack: Any, status: str, reason: str) -> None:
    stack.events.append(
        Event(
            stack_id=stack.stack_id, stack_name=stack.name,
            logical_resource_id="HeadNodeWaitCondition", physical_resource_id="",
            resource_type="AWS::CloudFormation::WaitCondition", resource_status=status,
            resource_status_reason=reason, resource_properties=None,
        )
    )  # fmt: skip


def test_a_completed_stack_reads_create_complete_with_its_version(
    reader: CloudFormationStackReader,
) -> None:
    # GIVEN a ParallelCluster-tagged stack moto created
    arn = make_stack()
    # WHEN read by name or by ARN
    by_name = reader.read("alpha", None, None)
    by_arn = reader.read("alpha", None, arn)
    # THEN CREATE_COMPLETE, pcluster's version from the tag, no failure reason
    for seen in (by_name, by_arn):
        assert (seen.exists, seen.status, seen.version) == (
            True, ClusterStatus.CREATE_COMPLETE, "3.16.1",
        )  # fmt: skip
        assert seen.reason is None


def test_a_stack_still_creating_reads_in_progress(reader: CloudFormationStackReader) -> None:
    # GIVEN a stack whose creation is under way
    make_stack()
    moto_stack("alpha").status = "CREATE_IN_PROGRESS"
    # WHEN read / THEN CREATE_IN_PROGRESS
    assert reader.read("alpha", None, None).status is ClusterStatus.CREATE_IN_PROGRESS


def test_a_rolled_back_create_reads_create_failed_with_the_first_failed_event(
    reader: CloudFormationStackReader,
) -> None:
    # GIVEN a stack that failed on its head node, then rolled back (ROLLBACK_COMPLETE)
    make_stack()
    stack = moto_stack("alpha")
    fail_resource(stack, "CREATE_FAILED", "Failed to receive 1 resource signal(s)")
    fail_resource(stack, "DELETE_FAILED", "later failure during the rollback")
    stack.status = "ROLLBACK_COMPLETE"
    # WHEN read
    seen = reader.read("alpha", None, None)
    # THEN ParallelCluster's mapping: CREATE_FAILED, with the first failure's reason
    assert (seen.status, seen.stack_status) == (ClusterStatus.CREATE_FAILED, "ROLLBACK_COMPLETE")
    assert seen.reason == "HeadNodeWaitCondition: Failed to receive 1 resource signal(s)"


def test_an_update_rollback_reads_update_failed(reader: CloudFormationStackReader) -> None:
    # GIVEN a stack whose update rolled back
    make_stack()
    moto_stack("alpha").status = "UPDATE_ROLLBACK_COMPLETE"
    # WHEN read / THEN UPDATE_FAILED (the cluster still runs its previous configuration)
    assert reader.read("alpha", None, None).status is ClusterStatus.UPDATE_FAILED


def test_a_deleted_stack_reads_delete_complete_by_arn_and_absent_by_name(
    reader: CloudFormationStackReader,
) -> None:
    # GIVEN a stack that was deleted
    arn = make_stack()
    client("cloudformation").delete_stack(StackName="alpha")
    # WHEN read by ARN / THEN DELETE_COMPLETE; by name / THEN it does not exist
    assert reader.read("alpha", None, arn).status is ClusterStatus.DELETE_COMPLETE
    assert reader.read("alpha", None, None).exists is False


def test_a_stack_without_parallelclusters_tag_is_refused(
    reader: CloudFormationStackReader,
) -> None:
    # GIVEN a stack of the same name that ParallelCluster did not make
    make_stack(tags=[{"Key": "team", "Value": "x"}])
    # WHEN read / THEN a permanent error, not a guess
    with pytest.raises(PermanentError, match="not a ParallelCluster stack"):
        reader.read("alpha", None, None)


def test_an_unknown_stack_does_not_exist(reader: CloudFormationStackReader) -> None:
    # GIVEN no stack / WHEN read / THEN exists is False
    assert reader.read("nosuch", None, None).exists is False
