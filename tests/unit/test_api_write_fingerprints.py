"""Golden fingerprints of every write route: what each POST/PUT with an ``Idempotency-Key``
hands to the idempotency layer.

Powertools derives a stored key from the call's ``scope`` (its hash is the record's id) and
checks a replay against the hash of its ``body``. If either changed, a client retrying after a
deployment would make a second request instead of a replay, or get 422 for its own retry. These
values were recorded before the write routes became typed commands (issue 11); they must never
change without a migration.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from werkzeug.test import Client

from broker.api import idempotency
from broker.api.handler import lambda_handler
from broker.batches.models import BatchAccepted
from broker.local.apigw import ApiGatewayApp, ApiRoute
from broker.schema import AcceptedResponse
from broker.settings import api_settings

OWNER = "arn:aws:iam::123456789012:user/alice"
RID = "r0000000000000000000000000000"
JOB = {"script": "#!/bin/bash\necho hi\n", "name": "golden", "nodes": 2}
CONFIG = "Region: us-east-1\nImage:\n  Os: alinux2\n"
#: (method, path, body) -> (route, scope, body as sent to Powertools, answer model)
GOLDEN: list[tuple[str, str, Any, str, str, str, str]] = [
    ("POST", "/v1/clusters/c1/jobs", JOB, "submit_job",
     f"{OWNER}|submit_job|cluster=c1/owner={OWNER}|k1",
     '{"hold": false, "name": "golden", "nodes": 2, "script": "#!/bin/bash\\necho hi\\n"}',
     "AcceptedResponse"),
    ("POST", "/v1/clusters/c1/jobs:batch", {"jobs": [JOB]}, "submit_batch",
     f"{OWNER}|submit_batch|cluster=c1/owner={OWNER}|k1",
     '{"atomic": false, "jobs": [{"name": "golden", "nodes": 2, '
     '"script": "#!/bin/bash\\necho hi\\n"}]}',
     "BatchAccepted"),
    ("POST", f"/v1/clusters/c1/jobs/{RID}/output", {"stream": "stdout", "offset": 5},
     "fetch_output", f"{OWNER}|fetch_output|cluster=c1/job_id={RID}/owner={OWNER}|k1",
     '{"max_bytes": 65536, "offset": 5, "stream": "stdout"}', "AcceptedResponse"),
    ("POST", "/v1/clusters", {"name": "c2", "configuration": CONFIG}, "create_cluster",
     f"{OWNER}|create_cluster|owner={OWNER}|k1",
     '{"configuration": "Region: us-east-1\\nImage:\\n  Os: alinux2\\n", "dryrun": false, '
     '"name": "c2", "rollback_on_failure": true}',
     "AcceptedResponse"),
    ("PUT", "/v1/clusters/c2", {"configuration": CONFIG, "dryrun": True}, "update_cluster",
     f"{OWNER}|update_cluster|cluster=c2/owner={OWNER}|k1",
     '{"configuration": "Region: us-east-1\\nImage:\\n  Os: alinux2\\n", "dryrun": true, '
     '"force_update": false}',
     "AcceptedResponse"),
    ("POST", "/v1/clusters/c2/fleet", {"status": "STOP_REQUESTED"}, "cluster_fleet",
     f"{OWNER}|cluster_fleet|cluster=c2/owner={OWNER}|k1", '{"status": "STOP_REQUESTED"}',
     "AcceptedResponse"),
]  # fmt: skip


@pytest.fixture
def handed_over(monkeypatch: pytest.MonkeyPatch) -> list[tuple[idempotency.IdempotentCall, str]]:
    """What the routes hand to Powertools (the persistence layer is not reached)."""
    monkeypatch.setenv("HPCB_TABLE_NAME", "unused")
    monkeypatch.setenv("HPCB_QUEUE_URL", "https://sqs.invalid/unused")
    monkeypatch.setenv("HPCB_IDEMPOTENCY_TABLE", "idempotency")
    api_settings.cache_clear()
    calls: list[tuple[idempotency.IdempotentCall, str]] = []

    def once(table: str, run: Any, model: type[Any]) -> Any:
        def accept(call: idempotency.IdempotentCall) -> Any:
            calls.append((call, model.__name__))
            accepted = AcceptedResponse(request_id=RID, location=f"/v1/requests/{RID}")
            if model is BatchAccepted:
                extra = {"accepted": 1, "rejected_count": 0, "rejected": [], "job_id_prefix": RID}
                return BatchAccepted(**accepted.model_dump(), **extra)
            return accepted

        return accept

    monkeypatch.setattr(idempotency, "_once", once)
    return calls


@pytest.mark.parametrize("case", GOLDEN, ids=[case[3] for case in GOLDEN])
def test_a_write_hands_the_recorded_fingerprint_to_the_idempotency_layer(
    handed_over: list[tuple[idempotency.IdempotentCall, str]],
    case: tuple[str, str, Any, str, str, str, str],
) -> None:
    method, path, body, route, scope, sent, model = case
    # GIVEN the API behind a local API Gateway
    route_ = ApiRoute(resource="/{proxy+}", method="ANY", handler=lambda_handler,
                      function_name="ApiFunction")  # fmt: skip
    client = Client(ApiGatewayApp([route_], default_principal=OWNER))
    # WHEN a write is sent with an Idempotency-Key
    answer = client.open(path, method=method, json=body, headers={"Idempotency-Key": "k1"})
    # THEN the idempotency layer got exactly the recorded scope and body, for the recorded route
    assert answer.status_code == 202, answer.get_data(as_text=True)
    ((call, answer_model),) = handed_over
    assert (call.route, call.scope, answer_model) == (route, scope, model)
    assert json.dumps(call.body, sort_keys=True) == sent
