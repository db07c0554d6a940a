"""Clusters: the status table, the stack -> cluster mapping, readiness, names, pcluster's
answers and errors (recognised by class name), and the local simulation's validators."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from broker.adapters.pcluster import DryrunSucceeded, cluster_info, error_of
from broker.clusters import (
    TRANSITIONS,
    ClusterRecord,
    ClusterStatus,
    ConfigurationRejectedError,
    can_transition,
    cluster_status_of_stack,
    ensure_can_start,
    ensure_ready,
    outcome_of,
)
from broker.clusters.models import ClusterCreateBody
from broker.errors import (
    ClusterNotFoundError,
    ClusterNotReadyError,
    ConflictError,
    PermanentError,
    ThrottledError,
    TransientError,
)
from broker.local.cluster_provider import validate_configuration
from broker.schema import utcnow

ROOT = Path(__file__).resolve().parents[2]
CONFIG = (
    "Image:\n  Os: alinux2\nHeadNode:\n  InstanceType: t3.micro\n  Ssh:\n    KeyName: k\n"
    "Scheduling:\n  Scheduler: slurm\n  SlurmQueues:\n  - Name: q\n"
)


def record(status: ClusterStatus, pending: str | None = None) -> ClusterRecord:
    now = utcnow()
    return ClusterRecord(
        name="alpha", owner="o", status=status, operation="create", operation_request_id="r1",
        pending_request_id=pending, created_at=now, updated_at=now,
    )  # fmt: skip


# -- the table ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", list(ClusterStatus))
def test_in_progress_statuses_only_move_to_their_own_ends(status: ClusterStatus) -> None:
    # GIVEN an in-progress status / THEN it moves only to the COMPLETE or FAILED of its kind
    if status.in_progress:
        kind = status.value.split("_")[0]
        assert {s.value for s in TRANSITIONS[status]} == {f"{kind}_COMPLETE", f"{kind}_FAILED"}


def test_a_cluster_never_goes_back_to_creating() -> None:
    # GIVEN any status / THEN nothing moves to CREATE_IN_PROGRESS (a new create is a new record)
    assert not any(can_transition(s, ClusterStatus.CREATE_IN_PROGRESS) for s in ClusterStatus)


def test_delete_complete_is_the_end() -> None:
    # GIVEN a deleted cluster / THEN no move leaves DELETE_COMPLETE
    assert TRANSITIONS[ClusterStatus.DELETE_COMPLETE] == frozenset()


@pytest.mark.parametrize(
    ("stack", "cluster"),
    [
        ("CREATE_COMPLETE", ClusterStatus.CREATE_COMPLETE),
        ("ROLLBACK_IN_PROGRESS", ClusterStatus.CREATE_FAILED),
        ("ROLLBACK_COMPLETE", ClusterStatus.CREATE_FAILED),
        ("UPDATE_COMPLETE_CLEANUP_IN_PROGRESS", ClusterStatus.UPDATE_IN_PROGRESS),
        ("UPDATE_ROLLBACK_IN_PROGRESS", ClusterStatus.UPDATE_IN_PROGRESS),
        ("UPDATE_ROLLBACK_COMPLETE", ClusterStatus.UPDATE_FAILED),
        ("DELETE_FAILED", ClusterStatus.DELETE_FAILED),
        ("REVIEW_IN_PROGRESS", None),
    ],
)
def test_stack_statuses_map_as_parallelcluster_maps_them(
    stack: str, cluster: ClusterStatus | None
) -> None:
    # GIVEN a CloudFormation stack status / THEN ParallelCluster's cluster status for it
    assert cluster_status_of_stack(stack) is cluster


def test_outcome_of_an_operation() -> None:
    # GIVEN the statuses an operation may reach / THEN its outcome, or None while it runs
    assert outcome_of("create", ClusterStatus.CREATE_COMPLETE) is True
    assert outcome_of("create", ClusterStatus.CREATE_FAILED) is False
    assert outcome_of("update", ClusterStatus.UPDATE_IN_PROGRESS) is None
    assert outcome_of("delete", ClusterStatus.DELETE_COMPLETE) is True


# -- readiness and starts -------------------------------------------------------------------


@pytest.mark.parametrize("status", list(ClusterStatus))
def test_jobs_are_refused_exactly_when_the_cluster_is_not_usable(status: ClusterStatus) -> None:
    # GIVEN a managed cluster in some status / WHEN jobs are sent
    usable = status.usable or status is ClusterStatus.DELETE_COMPLETE
    if usable:
        ensure_ready(record(status))  # THEN accepted (deleted: left to the directory)
    else:
        with pytest.raises(ClusterNotReadyError) as caught:
            ensure_ready(record(status))
        assert caught.value.status == status.value  # THEN 409 with its status


def test_an_unmanaged_cluster_is_not_gated() -> None:
    # GIVEN no record / THEN nothing is refused (the directory decides, as before)
    ensure_ready(None)


def test_one_operation_at_a_time() -> None:
    # GIVEN a cluster with an operation pending / WHEN another starts / THEN 409
    with pytest.raises(ConflictError, match="in progress"):
        ensure_can_start(record(ClusterStatus.CREATE_COMPLETE, pending="r2"), "update")


def test_a_failed_create_may_be_deleted_but_not_updated() -> None:
    # GIVEN a CREATE_FAILED cluster / THEN delete starts, update is a conflict
    ensure_can_start(record(ClusterStatus.CREATE_FAILED), "delete")
    with pytest.raises(ConflictError):
        ensure_can_start(record(ClusterStatus.CREATE_FAILED), "update")


# -- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "A1", "my-cluster-2", "a" * 60])
def test_parallelcluster_names_are_accepted(name: str) -> None:
    # GIVEN a name matching ^[a-zA-Z][a-zA-Z0-9-]{0,59}$ / THEN accepted
    assert ClusterCreateBody(name=name, configuration="x").name == name


@pytest.mark.parametrize("name", ["", "1a", "-a", "a_b", "a.b", "a b", "a" * 61, "é"])
def test_other_names_are_refused(name: str) -> None:
    # GIVEN a name ParallelCluster refuses / THEN a validation error
    with pytest.raises(ValidationError):
        ClusterCreateBody(name=name, configuration="x")


# -- pcluster's answers and errors ----------------------------------------------------------


def test_a_dry_run_exception_is_a_success_with_its_findings() -> None:
    # GIVEN pcluster's DryrunOperationException content
    content = {
        "message": "Request would have succeeded, but DryRun flag is set.",
        "validationMessages": [{"level": "WARNING", "type": "KeyPairValidator", "message": "m"}],
        "changeSet": [{"parameter": "HeadNode.InstanceType"}],
    }
    # WHEN mapped / THEN a dry-run answer, not an error
    error = error_of("DryrunOperationException", content)
    assert isinstance(error, DryrunSucceeded)
    assert error.answer.dryrun is True
    assert error.answer.validation_messages[0].type == "KeyPairValidator"
    assert error.answer.change_set == [{"parameter": "HeadNode.InstanceType"}]


def test_bad_request_content_becomes_structured_findings() -> None:
    # GIVEN CreateClusterBadRequestException / UpdateClusterBadRequestException content
    create = {
        "message": "Invalid cluster configuration.",
        "configurationValidationErrors": [
            {"level": "ERROR", "type": "KeyPairValidator", "message": "no key", "id": "x"}
        ],
    }
    update = {
        "message": "Update failure",
        "updateValidationErrors": [{"parameter": "Scheduling", "message": "stop the fleet"}],
    }
    # WHEN mapped / THEN ConfigurationRejectedError with level/type/message each
    rejected = error_of("CreateClusterBadRequestException", create)
    assert isinstance(rejected, ConfigurationRejectedError)
    assert [m.model_dump() for m in rejected.validation_messages] == [
        {"level": "ERROR", "type": "KeyPairValidator", "message": "no key"}
    ]
    refused = error_of("UpdateClusterBadRequestException", update)
    assert isinstance(refused, ConfigurationRejectedError)
    assert refused.validation_messages[0].type == "UpdateValidation:Scheduling"


@pytest.mark.parametrize(
    ("name", "kind", "transient"),
    [
        ("NotFoundException", ClusterNotFoundError, False),
        ("ConflictException", ConflictError, False),
        ("BadRequestException", PermanentError, False),
        ("ParameterException", PermanentError, False),
        ("LimitExceededException", ThrottledError, True),
        ("InternalServiceException", TransientError, True),
        ("SomethingNew", PermanentError, False),
    ],
)
def test_pcluster_errors_are_permanent_or_transient(
    name: str, kind: type[Exception], transient: bool
) -> None:
    # GIVEN a pcluster exception by class name / WHEN mapped / THEN the broker's taxonomy
    error = error_of(name, {"message": "m"})
    assert isinstance(error, kind)
    assert error.transient is transient


def test_a_describe_answer_becomes_cluster_info() -> None:
    # GIVEN pcluster's describe_cluster answer (camelCase JSON)
    answer = {
        "clusterName": "alpha", "region": "eu-west-1", "version": "3.16.1",
        "clusterStatus": "CREATE_COMPLETE", "cloudformationStackArn": "arn:stack",
        "scheduler": {"type": "slurm"}, "computeFleetStatus": "RUNNING",
        "headNode": {"instanceId": "i-0abc"},
        "failures": [{"failureCode": "HeadNodeBootstrapFailure", "failureReason": "boot"}],
    }  # fmt: skip
    # WHEN read / THEN every field lands
    seen = cluster_info(answer)
    assert (seen.status, seen.scheduler, seen.head_node_instance_id, seen.stack_arn) == (
        ClusterStatus.CREATE_COMPLETE, "slurm", "i-0abc", "arn:stack",
    )  # fmt: skip
    assert seen.failures[0].code == "HeadNodeBootstrapFailure"


# -- the local simulation's validators ------------------------------------------------------


def test_a_slurm_configuration_passes_the_simulations_validators() -> None:
    # GIVEN a minimal ParallelCluster 3 Slurm configuration / THEN no finding
    assert validate_configuration(CONFIG) == ([], None)


def test_missing_sections_are_errors_in_pclusters_shape() -> None:
    # GIVEN a configuration without a head node / THEN an ERROR of ConfigSchemaValidator
    findings, _ = validate_configuration("Image:\n  Os: alinux2\n")
    assert {(f.level, f.type) for f in findings} == {("ERROR", "ConfigSchemaValidator")}
    assert any("HeadNode.InstanceType" in f.message for f in findings)


def test_the_simulate_tag_asks_for_a_failure() -> None:
    # GIVEN the hpcb:simulate tag / THEN the failure it names
    text = CONFIG + "Tags:\n- Key: hpcb:simulate\n  Value: CREATE_FAILED\n"
    assert validate_configuration(text)[1] == "CREATE_FAILED"


# -- pcluster is never imported by the API or the job worker ----------------------------------


def test_api_and_job_worker_never_import_pcluster(tmp_path: Path) -> None:
    # GIVEN a "pcluster" package on the path that fails loudly when imported
    (tmp_path / "pcluster").mkdir()
    (tmp_path / "pcluster" / "__init__.py").write_text("raise ImportError('pcluster imported')\n")
    code = (
        "import sys, broker.api.handler, workers.job_worker, workers.cluster_worker, "
        "workers.sweeper, broker.adapters.pcluster\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'pcluster'], 'pcluster loaded'\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_METRICS_NAMESPACE": "t",
    }
    # WHEN the handlers' modules are imported in a fresh interpreter
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=False
    )
    # THEN none of them imported pcluster (not even the cluster worker, until it needs it)
    assert done.returncode == 0, done.stderr
