"""StackStatusReader on CloudFormation: the sweep follows cluster operations without pcluster.

A ParallelCluster cluster is the CloudFormation stack named after it, tagged
``parallelcluster:version``. One DescribeStacks call says where an operation stands; only when
it failed does a DescribeStackEvents call find why (the first ``*_FAILED`` resource event of the
current operation, which is what ``pcluster describe-cluster``'s failures point at).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from broker.adapters.aws import error_code, translate
from broker.clusters import StackObservation, cluster_status_of_stack
from broker.errors import PermanentError

VERSION_TAG = "parallelcluster:version"
#: Event pages read at most when looking for the failure (100 events each).
MAX_EVENT_PAGES = 3


class CloudFormationStackReader:
    """Reads cluster stacks.

    Args:
        client_for: a CloudFormation client for a region (None: the default region).
    """

    def __init__(self, client_for: Callable[[str | None], Any]) -> None:
        self._client_for = client_for

    def read(self, name: str, region: str | None, stack_arn: str | None) -> StackObservation:
        """The stack's status as a cluster status (by ARN when known: a deleted stack is only
        found by its ARN, as DELETE_COMPLETE).

        Raises:
            PermanentError: the stack is not a ParallelCluster stack.
            ThrottledError, TransientError: CloudFormation throttled or unreachable.
        """
        cfn = self._client_for(region)
        try:
            stacks = cfn.describe_stacks(StackName=stack_arn or name).get("Stacks", [])
        except ClientError as exc:
            if error_code(exc) == "ValidationError" and "does not exist" in str(exc):
                return StackObservation(exists=False)
            raise translate(exc, f"describe stack {name}") from exc
        except BotoCoreError as exc:
            raise translate(exc, f"describe stack {name}") from exc
        if not stacks:
            return StackObservation(exists=False)
        stack = stacks[0]
        tags = {t.get("Key"): t.get("Value") for t in stack.get("Tags", [])}
        if VERSION_TAG not in tags:
            raise PermanentError(
                f"stack {name} is not a ParallelCluster stack (no {VERSION_TAG} tag)",
                code="NOT_A_CLUSTER_STACK",
            )
        stack_status = str(stack.get("StackStatus", ""))
        status = cluster_status_of_stack(stack_status)
        reason = None
        if "FAILED" in stack_status or "ROLLBACK" in stack_status:
            reason = self._first_failure(cfn, str(stack.get("StackId") or name))
            reason = reason or stack.get("StackStatusReason")
        return StackObservation(
            exists=True,
            status=status,
            stack_status=stack_status,
            reason=reason,
            version=tags.get(VERSION_TAG),
        )

    def _first_failure(self, cfn: Any, stack: str) -> str | None:
        """The reason of the current operation's first failed resource (events come newest
        first; the operation starts at the stack's own "User Initiated" event)."""
        events: list[dict[str, Any]] = []
        token: str | None = None
        try:
            for _ in range(MAX_EVENT_PAGES):
                page = cfn.describe_stack_events(
                    StackName=stack, **({"NextToken": token} if token else {})
                )
                for event in page.get("StackEvents", []):
                    events.append(event)
                    if event.get("ResourceType") == "AWS::CloudFormation::Stack" and (
                        event.get("ResourceStatusReason") == "User Initiated"
                    ):
                        return _oldest_failure(events)
                token = page.get("NextToken")
                if not token:
                    break
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"describe stack events {stack}") from exc
        return _oldest_failure(events)


def _oldest_failure(events_newest_first: list[dict[str, Any]]) -> str | None:
    for event in reversed(events_newest_first):
        status = str(event.get("ResourceStatus", ""))
        reason = str(event.get("ResourceStatusReason") or "")
        if status.endswith("_FAILED") and reason and "cancelled" not in reason.lower():
            return f"{event.get('LogicalResourceId')}: {reason}"
    return None
