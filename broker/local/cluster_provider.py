"""A SIMULATION of ParallelCluster provisioning, for the local stack (never deployed).

ParallelCluster cannot provision on one machine (moto's CloudFormation cannot build its stack),
so local mode uses this stand-in for both ports the cluster path needs:

- ``ClusterProvider``: create/update/delete/describe/fleet/list with ParallelCluster's statuses
  and answer shapes: a configuration that is not a ParallelCluster 3 Slurm configuration is
  rejected with structured validator findings, a dry run validates only, names are unique;
- ``StackStatusReader``: the "stack" of a simulated cluster moves from ``*_IN_PROGRESS`` to its
  end after ``delay_seconds`` (realistic order, compressed time: a real create takes 10-20 min).

A simulated cluster that reaches CREATE_COMPLETE is bound to this machine's real Slurm: the
local cluster directory resolves any cluster whose broker record says ``local-simulation`` and
usable, so jobs sent to it really run.

The simulation's state lives in DynamoDB (moto), in the requests table under
``SIMCLUSTER#<name>``: the API, the worker and the sweeper run in different threads (and in
AWS would be different processes), so it must not live in one object's memory. Status is
derived from the operation's start time, so nothing has to tick.

Knob: a configuration tag ``{Key: hpcb:simulate, Value: CREATE_FAILED}`` (or ``UPDATE_FAILED``)
makes that operation fail at its end, with a resource failure reason, as CloudFormation would.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import yaml
from botocore.exceptions import ClientError

from broker.clusters import (
    ClusterFailure,
    ClusterInfo,
    ClusterStatus,
    ComputeFleetStatus,
    ConfigurationRejectedError,
    ProviderAnswer,
    StackObservation,
    ValidationMessage,
)
from broker.clusters.models import ClusterMessage
from broker.errors import ClusterNotFoundError, ConflictError
from broker.schema import utcnow

PROVIDER_NAME = "local-simulation"
SIMULATED_VERSION = "3.16.1-simulated"
_SIMULATE_TAG = "hpcb:simulate"
_FAILURE_REASON = (
    "HeadNodeWaitCondition: Failed to receive 1 resource signal(s) within the specified "
    "duration (simulated failure requested by the hpcb:simulate tag)"
)


def validate_configuration(text: str) -> tuple[list[ValidationMessage], str | None]:
    """The findings on a configuration, and the failure its hpcb:simulate tag asks for.

    Checks what any ParallelCluster 3 Slurm configuration has (Image.Os, HeadNode.InstanceType,
    Scheduling.Scheduler: slurm with SlurmQueues), in pcluster's finding shape.
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        finding = ValidationMessage(
            level="ERROR", type="ConfigSchemaValidator",
            message=f"the configuration is not valid YAML: {exc}",
        )  # fmt: skip
        return [finding], None
    if not isinstance(document, dict):
        return [
            ValidationMessage(
                level="ERROR", type="ConfigSchemaValidator",
                message="the configuration must be a YAML mapping",
            )
        ], None  # fmt: skip
    findings: list[ValidationMessage] = []

    def missing(path: str) -> None:
        findings.append(
            ValidationMessage(
                level="ERROR", type="ConfigSchemaValidator",
                message=f"[('{path}', ['Missing data for required field.'])]",
            )
        )  # fmt: skip

    image = document.get("Image")
    if not isinstance(image, dict) or not image.get("Os"):
        missing("Image.Os")
    head = document.get("HeadNode")
    if not isinstance(head, dict) or not head.get("InstanceType"):
        missing("HeadNode.InstanceType")
    scheduling = document.get("Scheduling")
    if not isinstance(scheduling, dict) or not scheduling.get("Scheduler"):
        missing("Scheduling.Scheduler")
    elif scheduling.get("Scheduler") != "slurm":
        findings.append(
            ValidationMessage(
                level="ERROR", type="SchedulerValidator",
                message="the local simulation binds clusters to this machine's Slurm: "
                "only 'Scheduler: slurm' is supported",
            )
        )  # fmt: skip
    elif not scheduling.get("SlurmQueues"):
        missing("Scheduling.SlurmQueues")
    if isinstance(head, dict) and not (head.get("Ssh") or {}).get("KeyName"):
        findings.append(
            ValidationMessage(
                level="WARNING", type="KeyPairValidator",
                message="If you do not specify a key pair, you can't connect to the instance "
                "unless your AMI is configured to allow users another way to log in",
            )
        )  # fmt: skip
    fail = None
    for tag in document.get("Tags") or []:
        if isinstance(tag, dict) and tag.get("Key") == _SIMULATE_TAG:
            fail = str(tag.get("Value"))
    return findings, fail


class SimulatedClusterProvider:
    """ClusterProvider and StackStatusReader of the local simulation (see the module doc).

    Args:
        ddb: a DynamoDB client (the local stack's moto).
        table: the requests table.
        delay_seconds: how long each create/update/delete stays in progress.
        region: the region reported.
        clock: wall clock (seconds), injectable.
    """

    def __init__(
        self,
        ddb: Any,
        table: str,
        *,
        delay_seconds: float = 5.0,
        region: str = "us-east-1",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ddb = ddb
        self._table = table
        self._delay = delay_seconds
        self._region = region
        self._clock = clock

    # -- ClusterProvider ---------------------------------------------------------------------

    def create(self, message: ClusterMessage) -> ProviderAnswer:
        """Validate; unless a dry run, start the simulated create (CREATE_IN_PROGRESS)."""
        findings, fail = self._validate(message)
        current = self._load(message.cluster)
        if current is not None and self._status(current) is not ClusterStatus.DELETE_COMPLETE:
            raise ConflictError(f"cluster {message.cluster} already exists")
        if message.dryrun:
            return _dry_run(findings)
        item = {
            "name": message.cluster, "region": message.region or self._region,
            "created_at": utcnow().isoformat(), "incarnation": uuid.uuid4().hex[:12],
            "operation": "create", "started": self._clock(),
            "fail": fail == ClusterStatus.CREATE_FAILED.value, "fleet": "RUNNING",
        }  # fmt: skip
        self._save(item)
        return ProviderAnswer(info=self._info(item), validation_messages=findings)

    def update(self, message: ClusterMessage) -> ProviderAnswer:
        """Validate; unless a dry run, start the simulated update (needs a stopped fleet
        unless ``force_update``, as ParallelCluster does for queue changes)."""
        current = self._existing(message.cluster)
        status = self._status(current)
        if status not in (ClusterStatus.CREATE_COMPLETE, ClusterStatus.UPDATE_COMPLETE,
                          ClusterStatus.UPDATE_FAILED):  # fmt: skip
            raise ConflictError(f"cluster {message.cluster} is {status.value}: cannot update")
        findings, fail = self._validate(message)
        if current.get("fleet") == "RUNNING" and not message.force_update:
            raise ConfigurationRejectedError(
                "Update failure",
                [ValidationMessage(
                    level="ERROR", type="UpdateValidation:Scheduling",
                    message="All compute nodes must be stopped (POST .../fleet STOP_REQUESTED), "
                    "or use force_update",
                )],
            )  # fmt: skip
        if message.dryrun:
            answer = _dry_run(findings)
            answer.change_set = [{"parameter": "Scheduling", "requestedValue": "(new)"}]
            return answer
        item = {**current, "operation": "update", "started": self._clock(),
                "fail": fail == ClusterStatus.UPDATE_FAILED.value}  # fmt: skip
        self._save(item)
        return ProviderAnswer(info=self._info(item), validation_messages=findings)

    def delete(self, name: str, region: str | None) -> ClusterInfo:
        """Start the simulated delete."""
        current = self._existing(name)
        if self._status(current).in_progress and current["operation"] == "delete":
            return self._info(current)
        item = {**current, "operation": "delete", "started": self._clock(), "fail": False}
        self._save(item)
        return self._info(item)

    def describe(self, name: str, region: str | None) -> ClusterInfo:
        """The simulated cluster now."""
        return self._info(self._existing(name))

    def update_compute_fleet(
        self, name: str, status: str, region: str | None
    ) -> ComputeFleetStatus:
        """Record the requested fleet status (the simulation's fleet follows at once)."""
        current = self._existing(name)
        fleet = "RUNNING" if status == "START_REQUESTED" else "STOPPED"
        self._save({**current, "fleet": fleet})
        return ComputeFleetStatus(status)

    # -- StackStatusReader -------------------------------------------------------------------

    def read(self, name: str, region: str | None, stack_arn: str | None) -> StackObservation:
        """The simulated stack's status (deleted: ``exists=False``)."""
        item = self._load(name)
        if item is None:
            return StackObservation(exists=False)
        status = self._status(item)
        if status is ClusterStatus.DELETE_COMPLETE:
            return StackObservation(exists=False)
        failed = status in (ClusterStatus.CREATE_FAILED, ClusterStatus.UPDATE_FAILED)
        return StackObservation(
            exists=True,
            status=status,
            stack_status=status.value,
            reason=_FAILURE_REASON if failed else None,
            version=SIMULATED_VERSION,
        )

    # -- state -------------------------------------------------------------------------------

    def _validate(self, message: ClusterMessage) -> tuple[list[ValidationMessage], str | None]:
        findings, fail = validate_configuration(message.configuration or "")
        level = message.validation_failure_level or "ERROR"
        failing = {"INFO": {"INFO", "WARNING", "ERROR"}, "WARNING": {"WARNING", "ERROR"},
                   "ERROR": {"ERROR"}}[level]  # fmt: skip
        suppressed = set(message.suppress_validators or [])
        kept = [
            f for f in findings
            if "ALL" not in suppressed and f"type:{f.type}" not in suppressed
        ]  # fmt: skip
        if any(f.level in failing for f in kept):
            raise ConfigurationRejectedError("Invalid cluster configuration.", kept)
        return kept, fail

    def _status(self, item: dict[str, Any]) -> ClusterStatus:
        done = self._clock() >= float(item["started"]) + self._delay
        operation = str(item["operation"])
        fail = bool(item.get("fail"))
        if operation == "create":
            if not done:
                return ClusterStatus.CREATE_IN_PROGRESS
            return ClusterStatus.CREATE_FAILED if fail else ClusterStatus.CREATE_COMPLETE
        if operation == "update":
            if not done:
                return ClusterStatus.UPDATE_IN_PROGRESS
            return ClusterStatus.UPDATE_FAILED if fail else ClusterStatus.UPDATE_COMPLETE
        return ClusterStatus.DELETE_COMPLETE if done else ClusterStatus.DELETE_IN_PROGRESS

    def _info(self, item: dict[str, Any]) -> ClusterInfo:
        status = self._status(item)
        failed = status in (ClusterStatus.CREATE_FAILED, ClusterStatus.UPDATE_FAILED)
        return ClusterInfo(
            name=str(item["name"]),
            region=str(item.get("region") or self._region),
            status=status,
            version=SIMULATED_VERSION,
            scheduler="slurm",
            head_node_instance_id="i-simulated" if status.usable else None,
            stack_arn=(
                f"arn:aws:cloudformation:{item.get('region') or self._region}:000000000000:"
                f"stack/{item['name']}/{item.get('incarnation', 'simulated')}"
            ),
            created_at=datetime.fromisoformat(str(item["created_at"]))
            if item.get("created_at")
            else None,
            compute_fleet_status=ComputeFleetStatus(str(item.get("fleet", "RUNNING"))),
            failures=[ClusterFailure(code="StackFailure", reason=_FAILURE_REASON)]
            if failed
            else [],
        )

    def _existing(self, name: str) -> dict[str, Any]:
        item = self._load(name)
        if item is None or self._status(item) is ClusterStatus.DELETE_COMPLETE:
            raise ClusterNotFoundError(f"Cluster '{name}' does not exist or belongs to an "
                                       "incompatible ParallelCluster major version.")  # fmt: skip
        return item

    def _load(self, name: str) -> dict[str, Any] | None:
        answer = self._ddb.get_item(
            TableName=self._table,
            Key={"pk": {"S": f"SIMCLUSTER#{name}"}, "sk": {"S": "SIM"}},
            ConsistentRead=True,
        )
        item = answer.get("Item")
        return None if item is None else _plain(item)

    def _save(self, item: dict[str, Any]) -> None:
        try:
            self._ddb.put_item(
                TableName=self._table,
                Item={
                    "pk": {"S": f"SIMCLUSTER#{item['name']}"},
                    "sk": {"S": "SIM"},
                    "name": {"S": str(item["name"])},
                    "region": {"S": str(item.get("region") or self._region)},
                    "operation": {"S": str(item["operation"])},
                    "started": {"N": repr(float(item["started"]))},
                    "fail": {"BOOL": bool(item.get("fail"))},
                    "fleet": {"S": str(item.get("fleet", "RUNNING"))},
                    "created_at": {"S": str(item.get("created_at") or utcnow().isoformat())},
                    "incarnation": {"S": str(item.get("incarnation") or "simulated")},
                },
            )
        except ClientError as exc:  # moto only: nothing to retry meaningfully
            raise ConflictError(f"simulated cluster store: {exc}") from exc

    # -- listing (last: its name shadows the builtin in the class body) ----------------

    def list(self, region: str | None) -> list[ClusterInfo]:
        """Every simulated cluster not deleted."""
        answer = self._ddb.scan(
            TableName=self._table,
            FilterExpression="begins_with(pk, :p)",
            ExpressionAttributeValues={":p": {"S": "SIMCLUSTER#"}},
        )
        items = [_plain(i) for i in answer.get("Items", [])]
        return [
            self._info(i) for i in items if self._status(i) is not ClusterStatus.DELETE_COMPLETE
        ]


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in item.items():
        if "S" in value:
            values[key] = value["S"]
        elif "N" in value:
            values[key] = float(value["N"])
        elif "BOOL" in value:
            values[key] = value["BOOL"]
    return values


def _dry_run(findings: list[ValidationMessage]) -> ProviderAnswer:
    return ProviderAnswer(
        dryrun=True,
        message="Request would have succeeded, but DryRun flag is set.",
        validation_messages=findings,
    )
