"""Which AWS API actions the broker's code can call, and which functions call them (issue 13).

``template.yaml`` gives each Lambda function its own role; ``tests/unit/test_iam.py`` holds this
module to the source, and ``tests/unit/test_template_iam.py`` checks that each role grants
exactly what this module derives for its function: no more, no fewer.

Three tables:

``CALLS``
    Every module that calls AWS (the adapters, the SSM runner, and the two API modules that
    hand our client to Powertools), each boto3 client method it calls, and the IAM actions
    that call needs, each with the kind of resource it is granted on. A test reads the
    modules' source (``ast``) and fails on a client method that is not listed here, and on a
    listed method the module no longer calls.
``FUNCTIONS``
    For each function of ``template.yaml``: the calling modules it uses (a test derives them
    from its handler and the factories of ``broker/wiring.py`` it imports), which of their
    calls (when not all), and the template resources each kind of resource is bound to.
``PLATFORM_*``
    What Lambda itself does with the function's role, derived from the template rather than
    the code: its log group, X-Ray traces, and reading its SQS event source.

Why a registry of client method names, mapped to IAM actions, rather than recording the calls
while the functional tests run: a recording sees only the paths the tests take (a rare error
path's ``cancel_command`` would be missed, and its permission then dropped as unused), and it
needs moto to implement every call. The source is complete and cheap to read: each adapter
calls its client through attribute access (``self._sqs.send_message(...)``, or a method passed
on, ``self.client.put_item``), and a method name is an API operation in snake case. The IAM
action is that operation in CamelCase (``send_message`` -> ``sqs:SendMessage``) except where
AWS authorizes the operation under other actions; those exceptions are ``IAM_NAME_EXCEPTIONS``,
each with its reason, and a test checks every other entry follows the rule and names an action
that exists (cfn-lint's copy of the Service Authorization Reference).

Granularity: a function that builds an adapter class is granted every call of the class's
modules (the DLQ workers may Query the table although they only read and write items), except
where a ``Use`` names the calls it reaches and why; those partial uses are checked to name real
calls, not traced through the services (that would need a call graph of the services).

A functional-test run with every botocore call recorded (359 tests, moto) saw no operation from
an adapter frame outside this registry.

``pcluster.lib`` (the cluster worker's ``PclusterProvider``) calls AWS with its own clients:
those permissions are ParallelCluster's documented policy (the ``ParallelClusterPolicyArn``
parameter), not derived here; the module itself makes no client call (a test checks).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Grant:
    """One IAM action and the kind of resource it is granted on.

    ``kind`` is the resource type of the Service Authorization Reference (``table``,
    ``index``, ``queue``, ``object``, ...), or ``any`` for an action that AWS does not
    authorize per resource (its policy Resource must be ``*``).
    """

    action: str
    kind: str


def _grants(kind: str, *actions: str) -> tuple[Grant, ...]:
    return tuple(Grant(action, kind) for action in actions)


#: Client methods whose IAM action is not the operation's name in CamelCase.
IAM_NAME_EXCEPTIONS: Mapping[str, str] = {
    "transact_write_items": "no action of its own: each item's action (the table module writes "
    "Put, Update and ConditionCheck items; a test reads which)",
    "send_message_batch": "authorized as sqs:SendMessage",
    "generate_presigned_url:get_object": "signs locally; whoever fetches the URL acts with the "
    "signer's permissions, so the signer needs s3:GetObject",
    "generate_presigned_url:put_object": "signs locally; the agent's upload needs the signer's "
    "s3:PutObject",
    "get_paginator:describe_instances": "pages of ec2:DescribeInstances",
}

_TABLE = "broker.adapters.dynamodb.table"

#: module -> client method -> what it needs.
CALLS: Mapping[str, Mapping[str, tuple[Grant, ...]]] = {
    _TABLE: {
        "get_item": _grants("table", "dynamodb:GetItem"),
        "put_item": _grants("table", "dynamodb:PutItem"),
        "update_item": _grants("table", "dynamodb:UpdateItem"),
        "transact_write_items": _grants(
            "table", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:ConditionCheckItem"
        ),
        "batch_get_item": _grants("table", "dynamodb:BatchGetItem"),
        # query_page reads the table (mappings) and gsi1 (listings).
        "query": (*_grants("table", "dynamodb:Query"), *_grants("index", "dynamodb:Query")),
        # scan_index: only ever an index (gsi2, the sparse attention index).
        "scan": _grants("index", "dynamodb:Scan"),
    },
    # Stores that pass a conditional write to the table's helper (``Table.conditional``).
    "broker.adapters.dynamodb.batches": {
        "put_item": _grants("table", "dynamodb:PutItem"),
        "update_item": _grants("table", "dynamodb:UpdateItem"),
    },
    "broker.adapters.dynamodb.clusters": {"put_item": _grants("table", "dynamodb:PutItem")},
    "broker.adapters.dynamodb.jobs": {"put_item": _grants("table", "dynamodb:PutItem")},
    "broker.adapters.dynamodb.users": {
        "put_item": _grants("table", "dynamodb:PutItem"),
        "delete_item": _grants("table", "dynamodb:DeleteItem"),
    },
    "broker.adapters.sqs": {
        "send_message": _grants("queue", "sqs:SendMessage"),
        "send_message_batch": _grants("queue", "sqs:SendMessage"),
        "change_message_visibility": _grants("queue", "sqs:ChangeMessageVisibility"),
        "get_queue_url": _grants("queue", "sqs:GetQueueUrl"),
    },
    "broker.adapters.sns": {"publish": _grants("topic", "sns:Publish")},
    "broker.adapters.s3": {
        "put_object": _grants("object", "s3:PutObject"),
        "generate_presigned_url:get_object": _grants("object", "s3:GetObject"),
    },
    "broker.adapters.ec2": {
        "get_paginator:describe_instances": _grants("any", "ec2:DescribeInstances"),
    },
    "broker.adapters.cloudformation": {
        "describe_stacks": _grants("stack", "cloudformation:DescribeStacks"),
        "describe_stack_events": _grants("stack", "cloudformation:DescribeStackEvents"),
    },
    "broker.adapters.pcluster": {},
    "broker.adapters.local_directory": {},
    "broker.runners.ssm": {
        "send_command": (
            *_grants("instance", "ssm:SendCommand"),
            *_grants("document", "ssm:SendCommand"),
        ),
        "get_command_invocation": _grants("any", "ssm:GetCommandInvocation"),
        "cancel_command": _grants("any", "ssm:CancelCommand"),
        "put_object": _grants("object", "s3:PutObject"),
        "get_object": _grants("object", "s3:GetObject"),
        "delete_object": _grants("object", "s3:DeleteObject"),
        "generate_presigned_url:get_object": _grants("object", "s3:GetObject"),
        "generate_presigned_url:put_object": _grants("object", "s3:PutObject"),
    },
    # These two give our client to Powertools, which makes the calls (LIBRARY_CALLERS).
    "broker.api.idempotency": {
        "get_item": _grants("table", "dynamodb:GetItem"),
        "put_item": _grants("table", "dynamodb:PutItem"),
        "update_item": _grants("table", "dynamodb:UpdateItem"),
        "delete_item": _grants("table", "dynamodb:DeleteItem"),
    },
    "broker.api.tokens": {"get_secret_value": _grants("secret", "secretsmanager:GetSecretValue")},
}

#: Modules whose calls a library makes with the client they pass: where to read them.
LIBRARY_CALLERS: Mapping[str, str] = {
    "broker.api.idempotency": "aws_lambda_powertools.utilities.idempotency.persistence.dynamodb",
    "broker.api.tokens": "aws_lambda_powertools.utilities.parameters.secrets",
}


@dataclass(frozen=True)
class Use:
    """A function's use of one calling module.

    Attributes:
        module: a key of ``CALLS``.
        resources: resource kind -> the template resources it is granted on, as the policy
            names them (``RequestsTable`` for ``!GetAtt RequestsTable.Arn`` or ``!Ref``, a
            ``!Sub`` string with ``${X.Arn}`` written ``X``).
        calls: the module's client methods the function reaches; None: all of them.
        why: why only those calls (required when ``calls`` is given).
    """

    module: str
    resources: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    calls: tuple[str, ...] | None = None
    why: str = ""


_PARTITION_REGION_ACCOUNT = "arn:${AWS::Partition}:%s:${AWS::Region}:${AWS::AccountId}"
TABLE = {"table": ("RequestsTable",), "index": ("RequestsTable/index/*",)}
TOPIC = {"topic": ("NotificationsTopic",)}
#: Every region: a cluster may live in another region than the broker (``regional_client``).
STACKS = {"stack": ("arn:${AWS::Partition}:cloudformation:*:${AWS::AccountId}:stack/*/*",)}
#: The SSM runner: head nodes (the policy adds the tag conditions), the one document, and the
#: staging prefixes of requests (payloads/) and answers (results/).
RUNNER = {
    "instance": (_PARTITION_REGION_ACCOUNT % "ec2" + ":instance/*",),
    "document": ("arn:${AWS::Partition}:ssm:${AWS::Region}::document/AWS-RunShellScript",),
    "object": ("StagingBucket/payloads/*", "StagingBucket/results/*"),
    "any": ("*",),
}
#: The table's records (``DynamoStore``: every record port, over the shared table helper).
RECORDS = (
    Use(_TABLE, TABLE),
    Use("broker.adapters.dynamodb.batches", TABLE),
    Use("broker.adapters.dynamodb.clusters", TABLE),
    Use("broker.adapters.dynamodb.jobs", TABLE),
)
_DELAY_RETRY = ("change_message_visibility", "get_queue_url")
_DELAY_WHY = "workers only delay a failed message's retry (workers/retrying.py)"

FUNCTIONS: Mapping[str, tuple[Use, ...]] = {
    "ApiFunction": (
        *RECORDS,
        Use("broker.adapters.dynamodb.users", TABLE),
        Use("broker.api.idempotency", {"table": ("IdempotencyTable",)}),
        Use("broker.api.tokens", {"secret": ("PageTokenSecret",)}),
        Use(
            "broker.adapters.sqs",
            {"queue": ("RequestsQueue", "ClusterQueue")},
            calls=("send_message", "send_message_batch"),
            why="the API sends requests and cluster operations; it receives nothing",
        ),
        # A job cancelled while still queued ends at once, in the API: it announces that.
        Use("broker.adapters.sns", TOPIC),
        Use("broker.adapters.ec2", {"any": ("*",)}),
        # A cluster create refuses a name whose stack the broker did not create (409).
        Use("broker.adapters.cloudformation", STACKS),
        Use("broker.adapters.local_directory"),
    ),
    "JobWorkerFunction": (
        *RECORDS,
        Use("broker.adapters.sns", TOPIC),
        Use("broker.adapters.ec2", {"any": ("*",)}),
        Use("broker.runners.ssm", RUNNER),
        Use("broker.adapters.s3", {"object": ("StagingBucket/outputs/*",)}),
        Use("broker.adapters.sqs", {"queue": ("RequestsQueue",)}, _DELAY_RETRY, _DELAY_WHY),
        Use("broker.adapters.local_directory"),
    ),
    "ClusterWorkerFunction": (
        *RECORDS,
        Use("broker.adapters.sns", TOPIC),
        Use("broker.adapters.sqs", {"queue": ("ClusterQueue",)}, _DELAY_RETRY, _DELAY_WHY),
        Use("broker.adapters.pcluster"),
    ),
    "ClusterDlqWorkerFunction": (
        *RECORDS,
        Use("broker.adapters.sns", TOPIC),
        Use(
            "broker.adapters.sqs",
            calls=(),
            why="its handler (workers.cluster_worker.dlq_handler) gives up, never retries",
        ),
        Use("broker.adapters.pcluster"),
    ),
    "DlqWorkerFunction": (
        *RECORDS,
        Use("broker.adapters.sns", TOPIC),
        # What of a dead chunk or submission is in Slurm: one head-node look-up (no sbatch).
        Use("broker.adapters.ec2", {"any": ("*",)}),
        Use("broker.runners.ssm", RUNNER),
        Use("broker.adapters.local_directory"),
    ),
    "SweeperFunction": (
        *RECORDS,
        Use("broker.adapters.sns", TOPIC),
        Use("broker.adapters.ec2", {"any": ("*",)}),
        Use("broker.runners.ssm", RUNNER),
        # Following cluster operations: one DescribeStacks per cluster in progress.
        Use("broker.adapters.cloudformation", STACKS),
        Use(
            "broker.adapters.sqs",
            {"queue": ("RequestsQueue",)},
            calls=("send_message",),
            why="the sweep re-sends a lost request message, one at a time",
        ),
        Use("broker.adapters.local_directory"),
    ),
}

#: Every function writes its logs to its own log group (``LoggingConfig``).
PLATFORM_LOGS = _grants("log-stream", "logs:CreateLogStream", "logs:PutLogEvents")
#: ``Tracing: Active``: X-Ray authorizes these on no resource.
PLATFORM_TRACING = _grants("any", "xray:PutTraceSegments", "xray:PutTelemetryRecords")
#: An SQS event source: Lambda polls the queue with the function's role.
PLATFORM_SQS_EVENT = _grants(
    "queue", "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"
)


def required(function: str) -> set[tuple[str, str]]:
    """The (action, resource) pairs the code of ``function`` needs (without the platform's).

    Raises:
        KeyError: a use names a module missing from ``CALLS``, or a call whose resource kind
            the use does not bind.
    """
    needed: set[tuple[str, str]] = set()
    for use in FUNCTIONS[function]:
        calls = CALLS[use.module]
        for method in calls if use.calls is None else use.calls:
            for grant in calls[method]:
                if grant.kind not in use.resources:
                    raise KeyError(f"{function}: {use.module}.{method} needs a {grant.kind}")
                needed |= {(grant.action, r) for r in use.resources[grant.kind]}
    return needed
