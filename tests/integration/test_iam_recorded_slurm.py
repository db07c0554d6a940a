"""The permissions derived from the code, against the calls the functions really make (issue 13).

The template's local stack runs on real Slurm with every botocore call recorded and attributed
to the function whose handler made it (the local stack calls handlers as Lambda would). Each
function's calls must be among the IAM actions ``broker/adapters/permissions.py`` derives for it
(plus Lambda's own: SQS polling). Local mode reaches no SSM, EC2 or CloudFormation (a local
runner, the local directory, a simulated cluster provider); the action names of what it does
reach (DynamoDB, SQS, SNS, S3, Secrets Manager) are checked function by function.
"""

from __future__ import annotations

import contextvars
import importlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import botocore.client
import pytest

from broker.adapters import permissions
from broker.client import BrokerClient
from broker.local.stack import LocalStack
from broker.local.template import load_template
from tests.conftest import TEMPLATE, local_stack

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

ALICE = "arn:aws:iam::000000000000:user/alice"
HELLO = "#!/bin/bash\necho hello\n"
#: Operations authorized under another action (as ``IAM_NAME_EXCEPTIONS`` says).
AUTHORIZED_AS = {"sqs:SendMessageBatch": "sqs:SendMessage"}

_FUNCTION: contextvars.ContextVar[str | None] = contextvars.ContextVar("function", default=None)
RECORDED: dict[str, set[str]] = defaultdict(set)


def _recording(original: Callable[..., Any]) -> Callable[..., Any]:
    def call(self: Any, operation: str, params: dict[str, Any]) -> Any:
        function = _FUNCTION.get()
        if function is not None:
            RECORDED[function].add(f"{self.meta.service_model.signing_name}:{operation}")
        return original(self, operation, params)

    return call


def _attributed(handler: Callable[..., Any]) -> Callable[..., Any]:
    def invoke(event: Any, context: Any) -> Any:
        # The physical name is the stack's prefix and the logical id (which has no dash).
        token = _FUNCTION.set(str(context.function_name).rsplit("-", 1)[-1])
        try:
            return handler(event, context)
        finally:
            _FUNCTION.reset(token)

    return invoke


@pytest.fixture(scope="module")
def stack(slurm: dict[str, str]) -> Iterator[LocalStack]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            botocore.client.BaseClient,
            "_make_api_call",
            _recording(botocore.client.BaseClient._make_api_call),
        )
        for function in load_template(TEMPLATE).of_type("AWS::Serverless::Function"):
            module_name, _, attribute = function.properties["Handler"].rpartition(".")
            module = importlib.import_module(module_name)
            patch.setattr(module, attribute, _attributed(getattr(module, attribute)))
        with local_stack(slurm, env={"HPCB_SWEEP_WINDOW_SECONDS": "0"}) as running:
            yield running


def test_every_call_a_function_makes_is_an_action_derived_for_it(stack: LocalStack) -> None:
    # GIVEN alice's job, a held job she cancels, an output read and a small batch
    alice = BrokerClient(stack.api_url, principal=ALICE)
    done = alice.wait(alice.submit_job("local", {"script": HELLO}).request_id, timeout=60)
    assert done.state == "SUCCEEDED"
    held = alice.wait(
        alice.submit_job("local", {"script": HELLO, "hold": True}).request_id, timeout=60
    )
    alice.wait(alice.cancel_job("local", held.request_id).request_id, timeout=60)
    alice.wait(alice.fetch_output("local", done.request_id).request_id, timeout=60)
    batch = alice.submit_batch("local", [{"script": HELLO}, {"script": HELLO}])
    alice.wait(batch.request_id, timeout=60)
    alice.list_jobs("local")
    stack.trigger("SweeperFunction")  # a sweep now, whatever its timer is doing
    # WHEN the calls recorded inside each handler are compared with the derived actions
    for function, calls in RECORDED.items():
        allowed = {action for action, _ in permissions.required(function)}
        allowed |= {g.action for g in permissions.PLATFORM_SQS_EVENT}
        made = {AUTHORIZED_AS.get(call, call) for call in calls}
        # a transaction is authorized by its items' actions, which are derived for it
        made.discard("dynamodb:TransactWriteItems")
        # THEN none is missing from the function's permissions
        assert made <= allowed, (function, made - allowed)
    # AND the API, the job worker and the sweep were all seen calling AWS
    assert {"ApiFunction", "JobWorkerFunction", "SweeperFunction"} <= set(RECORDED)
