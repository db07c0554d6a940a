"""Who owns what: the broker's owner string for an authenticated IAM caller.

API Gateway's ``AWS_IAM`` authorization gives the caller's ARN (``identity.userArn``).
Part of some ARNs is chosen by the caller, not by AWS, and must not decide ownership:

- an IAM user, ``arn:aws:iam::111122223333:user/path/alice``: the user; its name is the
  account administrator's choice. Owner: the ARN as it is.
- an assumed role, ``arn:aws:sts::111122223333:assumed-role/Researchers/alice``: the session
  name (``alice``) is chosen by whoever calls ``sts:AssumeRole``, so anyone allowed to assume
  ``Researchers`` could call themselves ``alice``. Owner: the role, every session alike
  (``arn:aws:sts::111122223333:assumed-role/Researchers/*``), unless the role is one whose
  session names an identity provider sets and the caller cannot choose: roles matching
  ``HPCB_SESSION_NAME_ROLES`` (default ``AWSReservedSSO_*``, IAM Identity Center's roles, whose
  session name is the signed-in user's name). Those keep the session: one owner per person.
  A site that pins session names itself (a trust policy with ``sts:RoleSessionName`` =
  ``${saml:sub}``, say) adds its role's name there.
- a federated user, ``arn:aws:sts::111122223333:federated-user/alice``: the name is chosen by
  whoever calls ``sts:GetFederationToken``. Owner: every federated user of the account alike
  (``arn:aws:sts::111122223333:federated-user/*``).
- anything else (the account root, an unknown form): the ARN as it is.

Pure: no AWS call; the API's ``caller`` applies it to every request.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence

_ASSUMED_ROLE = re.compile(r"^(arn:[a-z-]+:sts::\d{12}:assumed-role/)([^/]+)/(.+)$")
_FEDERATED = re.compile(r"^(arn:[a-z-]+:sts::\d{12}:federated-user/).+$")

#: IAM Identity Center's roles: the session name is the user's name, set by Identity Center.
DEFAULT_SESSION_NAME_ROLES = ("AWSReservedSSO_*",)


def owner_of(arn: str, session_name_roles: Sequence[str] = DEFAULT_SESSION_NAME_ROLES) -> str:
    """The owner of what ``arn`` creates (see the module's text)."""
    assumed = _ASSUMED_ROLE.fullmatch(arn)
    if assumed is not None:
        prefix, role, _session = assumed.groups()
        if any(fnmatch.fnmatchcase(role, pattern) for pattern in session_name_roles):
            return arn
        return f"{prefix}{role}/*"
    federated = _FEDERATED.fullmatch(arn)
    if federated is not None:
        return f"{federated.group(1)}*"
    return arn
