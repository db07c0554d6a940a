"""Create the template's queues, tables, buckets, topics and secrets in a moto server.

Everything goes through boto3 over real HTTP (``AWS_ENDPOINT_URL`` or an explicit endpoint), the
same way the deployed functions reach AWS. Resources are created in dependency order (a DLQ
before the queue whose ``RedrivePolicy`` names it), with deterministic physical names
``<prefix>-<LogicalId>`` unless the template names them itself. What does not matter locally
(``AWS::Serverless::Api``, IAM, alarms …) is skipped and listed in :attr:`Provisioned.skipped`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from broker.local.template import (
    DEFAULT_NAME_PREFIX,
    FUNCTION_TYPE,
    PROVISIONED_TYPES,
    LocalStackError,
    PhysicalResource,
    Resolver,
    ResourceDef,
    Template,
    TemplateError,
    physical_name,
    references,
)

__all__ = ["Provisioned", "ProvisioningError", "SkippedResource", "provision", "provision_order"]

logger = logging.getLogger(__name__)

# CloudFormation property -> SQS attribute, for the properties that are plain attributes.
_QUEUE_ATTRIBUTES: Final = (
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "DelaySeconds",
    "FifoQueue",
    "FifoThroughputLimit",
    "KmsDataKeyReusePeriodSeconds",
    "KmsMasterKeyId",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "SqsManagedSseEnabled",
    "VisibilityTimeout",
)
_TOPIC_ATTRIBUTES: Final = (
    "ContentBasedDeduplication",
    "DisplayName",
    "FifoTopic",
    "KmsMasterKeyId",
    "SignatureVersion",
    "TracingConfig",
)
_SUBSCRIPTION_ATTRIBUTES: Final = (
    "DeliveryPolicy",
    "FilterPolicy",
    "FilterPolicyScope",
    "RawMessageDelivery",
    "RedrivePolicy",
    "ReplayPolicy",
    "SubscriptionRoleArn",
)
_MAX_BUCKET_NAME: Final = 63
# GenerateSecretString properties that are GetRandomPassword parameters.
_PASSWORD_OPTIONS: Final = (
    "ExcludeCharacters",
    "ExcludeLowercase",
    "ExcludeNumbers",
    "ExcludePunctuation",
    "ExcludeUppercase",
    "IncludeSpace",
    "PasswordLength",
    "RequireEachIncludedType",
)


class ProvisioningError(LocalStackError):
    """A resource could not be created in the local AWS endpoint."""


@dataclass(frozen=True)
class SkippedResource:
    """A template resource the local stack does not create, and why."""

    logical_id: str
    type: str
    reason: str


@dataclass
class Provisioned:
    """What was created: logical id -> physical resource, plus what was skipped.

    ``resolver`` resolves intrinsics against these resources (it shares the same mapping).
    """

    resolver: Resolver
    resources: dict[str, PhysicalResource] = field(default_factory=dict)
    skipped: list[SkippedResource] = field(default_factory=list)

    def physical_id(self, logical_id: str) -> str:
        """The ``Ref`` value (queue URL, table name, bucket name, topic ARN) of a resource."""
        return self._get(logical_id).ref

    def attribute(self, logical_id: str, name: str) -> str:
        """A ``GetAtt`` attribute (``Arn``, ``QueueName`` …) of a resource."""
        attributes = self._get(logical_id).attributes
        if name not in attributes:
            raise KeyError(f"{logical_id} has no attribute {name} (has {sorted(attributes)})")
        return attributes[name]

    def queue_url(self, logical_id: str) -> str:
        """The URL of a provisioned ``AWS::SQS::Queue``."""
        resource = self._get(logical_id)
        if resource.type != "AWS::SQS::Queue":
            raise KeyError(f"{logical_id} is a {resource.type}, not a queue")
        return resource.ref

    def _get(self, logical_id: str) -> PhysicalResource:
        try:
            return self.resources[logical_id]
        except KeyError:
            raise KeyError(
                f"{logical_id} was not provisioned (have {sorted(self.resources)})"
            ) from None


def provision_order(template: Template, resolver: Resolver) -> list[ResourceDef]:
    """The provisionable, active resources, each after the resources it references.

    Raises:
        TemplateError: a reference cycle between provisionable resources.
    """
    candidates = {
        r.logical_id: r for r in template.of_type(*PROVISIONED_TYPES) if resolver.is_active(r)
    }
    ordered: list[ResourceDef] = []
    state: dict[str, str] = {}

    def visit(logical_id: str, chain: tuple[str, ...]) -> None:
        if state.get(logical_id) == "done":
            return
        if state.get(logical_id) == "visiting":
            raise TemplateError(f"reference cycle: {' -> '.join((*chain, logical_id))}")
        state[logical_id] = "visiting"
        resource = candidates[logical_id]
        deps = (references(resource.properties) | resource.depends_on) & candidates.keys()
        for dep in sorted(deps):
            visit(dep, (*chain, logical_id))
        state[logical_id] = "done"
        ordered.append(resource)

    for logical_id in candidates:
        visit(logical_id, ())
    return ordered


def provision(
    template: Template,
    *,
    region: str,
    account_id: str,
    endpoint_url: str | None = None,
    name_prefix: str = DEFAULT_NAME_PREFIX,
    parameter_overrides: Mapping[str, str] | None = None,
) -> Provisioned:
    """Create every supported resource of ``template`` in the AWS endpoint.

    Args:
        template: the loaded template.
        region: region for clients and ARNs.
        account_id: the account the endpoint answers for (moto's: from STS).
        endpoint_url: where AWS is (default: boto3's own resolution, i.e. ``AWS_ENDPOINT_URL``).
        name_prefix: prefix of the deterministic physical names.
        parameter_overrides: values for template parameters (else their defaults).

    Returns:
        The created resources, a resolver over them, and the skipped resources.

    Raises:
        ProvisioningError: an AWS call failed.
        TemplateError: a property that cannot be resolved locally.
    """
    resources: dict[str, PhysicalResource] = {}
    resolver = Resolver(
        template,
        region=region,
        account_id=account_id,
        physical=resources,
        parameter_overrides=parameter_overrides,
        name_prefix=name_prefix,
    )
    result = Provisioned(resolver=resolver, resources=resources)
    for res in template.resources.values():
        if res.type in PROVISIONED_TYPES and not resolver.is_active(res):
            result.skipped.append(SkippedResource(res.logical_id, res.type, "condition is false"))
        elif res.type not in PROVISIONED_TYPES and res.type != FUNCTION_TYPE:
            logger.debug("skipping %s (%s): not needed locally", res.logical_id, res.type)
            result.skipped.append(SkippedResource(res.logical_id, res.type, "not needed locally"))

    creators: dict[str, Callable[[_Context, ResourceDef], PhysicalResource]] = {
        "AWS::SQS::Queue": _create_queue,
        "AWS::DynamoDB::Table": _create_table,
        "AWS::S3::Bucket": _create_bucket,
        "AWS::SNS::Topic": _create_topic,
        "AWS::SNS::Subscription": _create_subscription,
        "AWS::SecretsManager::Secret": _create_secret,
    }
    ctx = _Context(resolver, region, endpoint_url, name_prefix)
    for res in provision_order(template, resolver):
        try:
            resources[res.logical_id] = creators[res.type](ctx, res)
        except (ClientError, BotoCoreError) as exc:
            raise ProvisioningError(
                f"creating {res.logical_id} ({res.type}) failed: {exc}"
            ) from exc
        logger.debug("provisioned %s -> %s", res.logical_id, resources[res.logical_id].ref)
    return result


@dataclass
class _Context:
    resolver: Resolver
    region: str
    endpoint_url: str | None
    name_prefix: str
    _clients: dict[str, Any] = field(default_factory=dict)

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = boto3.client(
                service, region_name=self.region, endpoint_url=self.endpoint_url
            )
        return self._clients[service]

    def props(self, res: ResourceDef) -> dict[str, Any]:
        resolved = self.resolver.resolve(res.properties)
        assert isinstance(resolved, dict)  # noqa: S101 - resolve keeps a dict a dict
        return resolved

    def name(self, res: ResourceDef) -> str:
        return physical_name(self.name_prefix, res.logical_id)


def _attr_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _redrive_policy(value: Any) -> str:
    policy = json.loads(value) if isinstance(value, str) else dict(value)
    # A Ref to a Number parameter resolves to a string; SQS wants the count as a number.
    if "maxReceiveCount" in policy:
        policy["maxReceiveCount"] = int(policy["maxReceiveCount"])
    return json.dumps(policy)


def _create_queue(ctx: _Context, res: ResourceDef) -> PhysicalResource:
    props = ctx.props(res)
    fifo = _attr_str(props.get("FifoQueue", False)) == "true"
    name = str(props.get("QueueName") or ctx.name(res) + (".fifo" if fifo else ""))
    attributes: dict[str, str] = {k: _attr_str(props[k]) for k in _QUEUE_ATTRIBUTES if k in props}
    if "RedrivePolicy" in props:
        attributes["RedrivePolicy"] = _redrive_policy(props["RedrivePolicy"])
    if "RedriveAllowPolicy" in props:
        attributes["RedriveAllowPolicy"] = _attr_str(props["RedriveAllowPolicy"])
    sqs = ctx.client("sqs")
    url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    return PhysicalResource(
        res.logical_id, res.type, url, {"Arn": arn, "QueueName": name, "QueueUrl": url}
    )


def _create_table(ctx: _Context, res: ResourceDef) -> PhysicalResource:
    props = ctx.props(res)
    name = str(props.get("TableName") or ctx.name(res))
    # CloudFormation's default billing mode is PROVISIONED.
    billing = str(props.get("BillingMode", "PROVISIONED"))
    throughput = props.get(
        "ProvisionedThroughput", {"ReadCapacityUnits": 5, "WriteCapacityUnits": 5}
    )
    kwargs: dict[str, Any] = {
        "TableName": name,
        "AttributeDefinitions": props["AttributeDefinitions"],
        "KeySchema": props["KeySchema"],
        "BillingMode": billing,
    }
    if billing == "PROVISIONED":
        kwargs["ProvisionedThroughput"] = _throughput(throughput)
    for key in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
        if props.get(key):
            indexes = []
            for index in props[key]:
                spec = {k: index[k] for k in ("IndexName", "KeySchema", "Projection")}
                if key == "GlobalSecondaryIndexes" and billing == "PROVISIONED":
                    spec["ProvisionedThroughput"] = _throughput(
                        index.get("ProvisionedThroughput", throughput)
                    )
                indexes.append(spec)
            kwargs[key] = indexes
    stream = props.get("StreamSpecification")
    if stream:
        kwargs["StreamSpecification"] = {
            "StreamEnabled": True,
            "StreamViewType": stream["StreamViewType"],
        }
    ddb = ctx.client("dynamodb")
    table = ddb.create_table(**kwargs)["TableDescription"]
    ttl = props.get("TimeToLiveSpecification")
    if ttl and _attr_str(ttl.get("Enabled", False)) == "true":
        ddb.update_time_to_live(
            TableName=name,
            TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
        )
    attributes = {"Arn": str(table["TableArn"])}
    if table.get("LatestStreamArn"):
        attributes["StreamArn"] = str(table["LatestStreamArn"])
    return PhysicalResource(res.logical_id, res.type, name, attributes)


def _throughput(value: Mapping[str, Any]) -> dict[str, int]:
    return {
        "ReadCapacityUnits": int(value["ReadCapacityUnits"]),
        "WriteCapacityUnits": int(value["WriteCapacityUnits"]),
    }


def _create_bucket(ctx: _Context, res: ResourceDef) -> PhysicalResource:
    props = ctx.props(res)
    # Bucket names are lowercase; a logical id rarely is.
    name = str(props.get("BucketName") or ctx.name(res).lower())
    if len(name) > _MAX_BUCKET_NAME:
        raise TemplateError(f"{res.logical_id}: bucket name {name!r} is longer than 63 characters")
    s3 = ctx.client("s3")
    kwargs: dict[str, Any] = {"Bucket": name}
    if ctx.region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": ctx.region}
    s3.create_bucket(**kwargs)
    versioning = (props.get("VersioningConfiguration") or {}).get("Status")
    if versioning:
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": versioning})
    partition = ctx.resolver.partition
    suffix = ctx.resolver.url_suffix
    return PhysicalResource(
        res.logical_id,
        res.type,
        name,
        {
            "Arn": f"arn:{partition}:s3:::{name}",
            "DomainName": f"{name}.s3.{suffix}",
            "RegionalDomainName": f"{name}.s3.{ctx.region}.{suffix}",
        },
    )


def _create_topic(ctx: _Context, res: ResourceDef) -> PhysicalResource:
    props = ctx.props(res)
    fifo = _attr_str(props.get("FifoTopic", False)) == "true"
    name = str(props.get("TopicName") or ctx.name(res) + (".fifo" if fifo else ""))
    attributes = {k: _attr_str(props[k]) for k in _TOPIC_ATTRIBUTES if k in props}
    sns = ctx.client("sns")
    arn = str(sns.create_topic(Name=name, Attributes=attributes)["TopicArn"])
    for sub in props.get("Subscription") or []:
        sns.subscribe(TopicArn=arn, Protocol=sub["Protocol"], Endpoint=sub["Endpoint"])
    return PhysicalResource(res.logical_id, res.type, arn, {"TopicArn": arn, "TopicName": name})


def _create_subscription(ctx: _Context, res: ResourceDef) -> PhysicalResource:
    props = ctx.props(res)
    attributes = {k: _attr_str(props[k]) for k in _SUBSCRIPTION_ATTRIBUTES if k in props}
    arn = str(
        ctx.client("sns").subscribe(
            TopicArn=props["TopicArn"],
            Protocol=props["Protocol"],
            Endpoint=props["Endpoint"],
            Attributes=attributes,
            ReturnSubscriptionArn=True,
        )["SubscriptionArn"]
    )
    return PhysicalResource(res.logical_id, res.type, arn, {"Arn": arn})


def _create_secret(ctx: _Context, res: ResourceDef) -> PhysicalResource:
    """A secret; with ``GenerateSecretString``, its value is generated as CloudFormation would
    (``GetRandomPassword`` with the same options; ``SecretStringTemplate`` is not supported)."""
    props = ctx.props(res)
    name = str(props.get("Name") or ctx.name(res))
    secrets = ctx.client("secretsmanager")
    value = props.get("SecretString")
    generate = props.get("GenerateSecretString")
    if value is None and isinstance(generate, Mapping):
        if "SecretStringTemplate" in generate:
            raise TemplateError(f"{res.logical_id}: SecretStringTemplate is not supported locally")
        options = {k: generate[k] for k in _PASSWORD_OPTIONS if k in generate}
        value = secrets.get_random_password(**options)["RandomPassword"]
    arn = str(secrets.create_secret(Name=name, SecretString=str(value or ""))["ARN"])
    return PhysicalResource(res.logical_id, res.type, arn, {"Id": arn})
