"""A caller's POSIX user on a cluster: the record, the admin API's bodies and views."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field, field_validator

from broker.schema import POSIX_USER, StrictModel, a_json_number

#: An owner as ``broker.identity.owner_of`` names it: an IAM or STS ARN (a role's or federated
#: users' wildcard form included). Printable ASCII without spaces.
PRINCIPAL_PATTERN = r"^arn:aws[a-z-]{0,16}:(iam|sts)::[0-9]{12}:[!-~]{1,1000}$"
#: Linux's largest uid is 2**32 - 2; 0 (root) is never a mapping's uid.
MAX_UID = 2**32 - 2

Principal = str


class UserMapping(BaseModel):
    """Caller ``principal`` runs as POSIX ``user`` on ``cluster`` (and only there)."""

    cluster: str
    principal: Principal = Field(pattern=PRINCIPAL_PATTERN)
    user: str = Field(pattern=POSIX_USER)
    uid: int | None = Field(default=None, ge=1, le=MAX_UID)
    created_at: datetime
    created_by: str


class MappingBody(StrictModel):
    """``PUT /v1/admin/clusters/{cluster}/users``: map a caller to a POSIX user."""

    principal: Principal = Field(
        pattern=PRINCIPAL_PATTERN,
        max_length=1100,
        description="The caller as the broker names owners: an IAM user's ARN, or the role's "
        "form for a role's sessions (see README 'Identity and ownership').",
    )
    user: str = Field(
        pattern=POSIX_USER,
        description="Their POSIX user on the cluster's head node (must exist there, uid >= the "
        "agent's minimum, never root: the agent checks again).",
    )
    uid: int | None = Field(
        default=None, strict=False, ge=1, le=MAX_UID,
        description="Optional: the uid, for the record.",
    )  # fmt: skip

    # 3.0 is the integer 3, as JSON Schema reads it; "3" and true are not.
    _integers = field_validator("uid", mode="before")(a_json_number)


class MappingView(BaseModel):
    """One mapping as the admin API shows it."""

    cluster: str
    principal: str
    user: str
    uid: int | None = None
    created_at: datetime
    created_by: str

    @classmethod
    def of(cls, mapping: UserMapping) -> MappingView:
        return cls.model_validate(mapping.model_dump())


class MappingList(BaseModel):
    """A page of a cluster's mappings, by principal."""

    mappings: list[MappingView]
    next_token: str | None = None
