"""The hpc-broker Python client: typed, polling hidden, bursts without duplicates.

    from broker.client import BrokerClient

    client = BrokerClient.from_environment()          # --endpoint / HPCB_ENDPOINT / config / stack
    accepted = client.submit_job("mycluster", {"script": "#!/bin/bash\\nhostname\\n"})
    request = client.wait(accepted.request_id)       # RequestView, the API's own model
    job = client.wait_for_job("mycluster", accepted.request_id)
    result = client.submit_many("mycluster", specs)  # any number; per-item outcomes

Importing it needs pydantic, tenacity and the broker's models; botocore only when a call is
signed or a stack's output is read. Never Powertools, never boto3.
"""

from __future__ import annotations

from broker.client.api import FINAL_REQUEST_STATES, BrokerClient
from broker.client.bulk import BatchOutcome, BulkResult, ItemResult
from broker.client.config import Settings, config_path, resolve, save_config
from broker.client.errors import (
    ApiError,
    ClientError,
    ConfigurationError,
    ConflictError,
    ConnectionFailedError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    RequestFailedError,
    ServerError,
    TooManyRequestsError,
    WaitTimeoutError,
)
from broker.client.polling import Backoff
from broker.client.transport import LOCAL_PRINCIPAL_HEADER, HttpAnswer, Transport

__all__ = [
    "FINAL_REQUEST_STATES",
    "LOCAL_PRINCIPAL_HEADER",
    "ApiError",
    "Backoff",
    "BatchOutcome",
    "BrokerClient",
    "BulkResult",
    "ClientError",
    "ConfigurationError",
    "ConflictError",
    "ConnectionFailedError",
    "ForbiddenError",
    "HttpAnswer",
    "InvalidRequestError",
    "ItemResult",
    "NotFoundError",
    "PayloadTooLargeError",
    "RequestFailedError",
    "ServerError",
    "Settings",
    "TooManyRequestsError",
    "Transport",
    "WaitTimeoutError",
    "config_path",
    "resolve",
    "save_config",
]
