"""Sweeps: one job run for many parameter sets, packed into Slurm job arrays.

A sweep (``POST /v1/clusters/{cluster}/jobs:sweep``) is a batch whose items share everything
but their variables: a template job and one parameter set per item. It is accepted like a batch
(one record, items addressed by index, rejected items listed) and its chunks are packed: a chunk
is one agent job whose positions are the chunk's items (``AgentJob.tasks``), which the agent
submits as one ``sbatch --array`` per ``MaxArraySize`` positions, each array under its own
deterministic token. Item ``i`` of a chunk becomes array task ``<array>_<i - first>``, and from
then on it is a job like any other (status, cancel, output, dependencies).

A chunk message carries the template once and the items' parameter sets; ``as_batch`` gives the
same chunk as a plain batch chunk, which is what records, outcomes and the dead-letter path read.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from broker.batches.models import (
    BatchItem,
    BatchItemError,
    ChunkMessage,
    JobBatchMessage,
    item_id,
)
from broker.jobs.models import ENV_NAME_PATTERN, EnvName, EnvValue, JobSpec, sweep_token
from broker.schema import FieldError, StrictModel

#: Most items a sweep may hold (item ids keep 6 hex digits of index), and its chunks: at most
#: SWEEP_CHUNK_ITEMS items and about SWEEP_CHUNK_BYTES of JSON (SQS takes 256 KiB).
MAX_SWEEP_ITEMS = 100_000
SWEEP_CHUNK_ITEMS = 5000
SWEEP_CHUNK_BYTES = 200 * 1024
#: Most variables a task may have, its template's and its own together.
MAX_TASK_VARIABLES = 128

#: One item's variables: the names and values a job's environment takes.
ParameterSet = dict[EnvName, EnvValue]
_PARAMETER_SET: TypeAdapter[ParameterSet] = TypeAdapter(ParameterSet)
#: The OpenAPI document's statement of one valid parameter set.
PARAMETER_SET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "maxProperties": MAX_TASK_VARIABLES,
    "propertyNames": {"pattern": ENV_NAME_PATTERN},
    "additionalProperties": {"type": "string", "maxLength": 4096, "pattern": r"^[^\x00]*$"},
}


class SweepTemplate(JobSpec):
    """The job every item of a sweep runs: a JobSpec without ``array`` (the sweep is one)."""

    array: None = Field(default=None, description="Not allowed: a sweep makes the arrays.")


class SweepBody(StrictModel):
    """One job for many parameter sets (``POST /v1/clusters/{cluster}/jobs:sweep``).

    Each item is the template with the item's variables added to its environment (an item's
    value wins over the template's). Items are validated one by one, as a batch's are.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"atomic": {"const": True}}, "required": ["atomic"]},
            "then": {"properties": {"parameters": {"items": PARAMETER_SET_SCHEMA}}},
            "else": {"properties": {"parameters": {"contains": PARAMETER_SET_SCHEMA}}},
        }
    )

    template: SweepTemplate = Field(description="The job each item runs.")
    parameters: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=MAX_SWEEP_ITEMS,
        description=f"1 to {MAX_SWEEP_ITEMS} parameter sets, one per item: variables (names "
        "and values as in a job's environment) each item's task gets. With atomic=false, "
        "invalid items are listed in the answer, but at least one must be valid.",
    )
    atomic: bool = Field(
        default=False,
        description="true: any invalid item rejects the whole sweep (422, nothing accepted).",
    )


class JobSweepMessage(ChunkMessage):
    """Queue message: a chunk of a sweep (one agent job, as many arrays as MaxArraySize asks)."""

    kind: Literal["job.sweep"] = "job.sweep"
    chunk: int = Field(ge=0, description="The chunk's number in its sweep.")
    template: SweepTemplate
    indexes: list[int] = Field(description="The items' indexes in the sweep, in order.")
    parameters: list[dict[str, str]] = Field(description="Each item's own variables.")

    def token(self) -> str:
        """The chunk's Slurm token (its arrays add ``a<k>``)."""
        return sweep_token(self.request_id, self.chunk)

    def as_batch(self) -> JobBatchMessage:
        """The same chunk as a batch chunk: one item per index, its spec the template with the
        item's variables."""
        base = self.template.environment or {}
        items = [
            BatchItem.model_construct(
                index=index,
                job_id=item_id(self.request_id, index),
                spec=self.template.model_copy(update={"environment": {**base, **own} or None}),
            )
            for index, own in zip(self.indexes, self.parameters, strict=True)
        ]
        return JobBatchMessage(request_id=self.request_id, owner=self.owner, cluster=self.cluster,
                               user=self.user, items=items, chunk=self.chunk)  # fmt: skip


def validate_parameters(
    body: SweepBody,
) -> tuple[list[tuple[int, dict[str, str]]], list[BatchItemError]]:
    """The valid items' parameter sets by index, and the invalid items' errors."""
    base = set(body.template.environment or {})
    valid: list[tuple[int, dict[str, str]]] = []
    rejected: list[BatchItemError] = []
    for index, raw in enumerate(body.parameters):
        where = f"body.parameters.{index}"
        try:
            own = _PARAMETER_SET.validate_python(raw, strict=True)
        except PydanticValidationError as exc:
            fields = [
                FieldError(field=".".join([where, *(str(p) for p in e["loc"])]),
                           message=e["msg"], type=e["type"])
                for e in exc.errors()
            ]  # fmt: skip
            rejected.append(BatchItemError(index=index, fields=fields))
            continue
        if len(base | set(own)) > MAX_TASK_VARIABLES:
            message = f"more than {MAX_TASK_VARIABLES} variables with the template's"
            rejected.append(BatchItemError(
                index=index, fields=[FieldError(field=where, message=message, type="too_long")]
            ))  # fmt: skip
            continue
        valid.append((index, own))
    return valid, rejected


def packable(first: JobSpec, other: JobSpec) -> bool:
    """Whether two jobs differ only in their environment (and neither is an array)."""
    if first.array is not None or other.array is not None:
        return False
    return first.model_copy(update={"environment": None}) == other.model_copy(
        update={"environment": None}
    )


def as_template(spec: JobSpec) -> SweepTemplate:
    """A job as the template of the run it packs (its environment is its items')."""
    return SweepTemplate.model_validate(
        spec.model_dump(exclude={"environment", "array"}, exclude_unset=True)
    )


def sweep_chunks(
    base: JobSweepMessage, items: list[tuple[int, dict[str, str]]]
) -> list[JobSweepMessage]:
    """A sweep's valid items in chunk messages of at most SWEEP_CHUNK_ITEMS items and about
    SWEEP_CHUNK_BYTES each (the template counted once per chunk), numbered from ``base``'s."""
    budget = SWEEP_CHUNK_BYTES - len(base.template.model_dump_json(exclude_defaults=True))
    chunks: list[JobSweepMessage] = []
    size = budget
    for index, own in items:
        length = 8 + len(json.dumps(own))
        if not chunks or len(chunks[-1].indexes) >= SWEEP_CHUNK_ITEMS or size + length > budget:
            number = base.chunk + len(chunks)
            chunk = base.model_copy(update={"chunk": number, "indexes": [], "parameters": []})
            chunks.append(chunk)
            size = 0
        chunks[-1].indexes.append(index)
        chunks[-1].parameters.append(own)
        size += length
    return chunks
