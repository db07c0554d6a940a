"""The caller-to-user mapping: its record, the admin API's body and answers, its error."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints, field_validator

from broker.agent.protocol import DEFAULT_MIN_UID
from broker.errors import ForbiddenError
from broker.schema import POSIX_USER, StrictModel, a_json_number

#: An IAM principal as API Gateway reports it (``requestContext.identity.userArn``): an IAM user
#: or root (``arn:aws:iam::<account>:user/path/name``), an assumed role's session
#: (``arn:aws:sts::<account>:assumed-role/Role/session``) or a federated user. IAM names and
#: paths use ``[A-Za-z0-9+=,.@_-]`` and ``/``; nothing else (no ':', no spaces, no '%').
PRINCIPAL_PATTERN = r"^arn:aws[a-z-]{0,16}:(iam|sts)::[0-9]{12}:[A-Za-z0-9+=,.@_/-]{1,900}$"
#: Largest uid a mapping may name (Linux: 2**32 - 2; -1 is "no uid").
MAX_UID = 4_294_967_294

Principal = Annotated[str, StringConstraints(pattern=PRINCIPAL_PATTERN, max_length=1000)]
PosixUser = Annotated[str, StringConstraints(pattern=POSIX_USER)]


def _not_root(user: str) -> str:
    if user == "root":
        raise ValueError("root is never a mapped user: jobs never run as root")
    return user


class MappingBody(StrictModel):
    """``PUT /v1/admin/clusters/{cluster}/users/mapping``: the user a principal acts as."""

    user: PosixUser = Field(
        description="POSIX user on the cluster's head node (useradd's portable shape: a "
        "lowercase letter or '_', then up to 31 of [a-z0-9_-]); never root. The head-node "
        "agent checks again, at each call, that it exists and its uid is at least 1000."
    )
    uid: int | None = Field(
        default=None,
        strict=False,  # 1500.0 is 1500, as JSON Schema reads it; "1500" and true are not
        ge=DEFAULT_MIN_UID,
        le=MAX_UID,
        description="The user's uid, if known: recorded for the administrator (the agent "
        "reads the real uid on the head node). At least 1000.",
    )

    _integers = field_validator("uid", mode="before")(a_json_number)

    @field_validator("user")
    @classmethod
    def _user_not_root(cls, user: str) -> str:
        return _not_root(user)


class UserMapping(BaseModel):
    """One caller's POSIX user on one cluster, as stored and shown to administrators."""

    cluster: str = Field(description="Cluster name.")
    principal: str = Field(description="IAM principal (ARN) of the caller.")
    user: str = Field(pattern=POSIX_USER, description="POSIX user the caller's jobs run as.")
    uid: int | None = Field(default=None, description="The user's uid, if the admin gave it.")
    created_at: datetime = Field(description="When the mapping was written (UTC).")
    created_by: str = Field(description="Administrator (IAM principal) who wrote it.")


class UserMappingList(BaseModel):
    """A page of a cluster's mappings, by principal."""

    mappings: list[UserMapping]
    next_token: str | None = Field(
        default=None, description="Pass as next_token for the next page; absent on the last."
    )


class NotMappedError(ForbiddenError):
    """The caller has no POSIX user on that cluster: nothing is done on their behalf (403)."""

    code = "NOT_MAPPED"
