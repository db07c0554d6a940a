"""The notifications topic lets only the broker publish (issue 12, "Notifications"): its policy
denies sns:Publish to every principal but the roles of the broker's own functions, and any
publish without TLS."""

from __future__ import annotations

from typing import Any

from broker.local.template import load_template
from tests.conftest import TEMPLATE

TEMPLATE_DEF = load_template(TEMPLATE)


def statements() -> list[dict[str, Any]]:
    (policy,) = TEMPLATE_DEF.of_type("AWS::SNS::TopicPolicy")
    assert policy.properties["Topics"] == [{"Ref": "NotificationsTopic"}]
    return list(policy.properties["PolicyDocument"]["Statement"])


def test_only_the_broker_functions_roles_may_publish() -> None:
    # GIVEN the topic policy's deny for principals that are not the broker's
    (only,) = [s for s in statements() if s["Sid"] == "OnlyTheBrokerPublishes"]
    allowed = only["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]
    # THEN it denies Publish to everyone else, and the exceptions are exactly the roles of the
    # template's functions (a new function that publishes must be added here, on purpose)
    functions = {f.logical_id for f in TEMPLATE_DEF.of_type("AWS::Serverless::Function")}
    assert (only["Effect"], only["Principal"], only["Action"]) == ("Deny", "*", "sns:Publish")
    assert {a["Fn::GetAtt"][0] for a in allowed} == {f"{name}Role" for name in functions}
    assert all(a["Fn::GetAtt"][1] == "Arn" for a in allowed)


def test_publishing_without_tls_is_denied() -> None:
    (tls,) = [s for s in statements() if s["Sid"] == "TlsOnly"]
    assert tls["Effect"] == "Deny"
    assert tls["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
