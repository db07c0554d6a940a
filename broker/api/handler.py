"""Lambda entry point of the API function (``broker.api.handler.lambda_handler``)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from broker.api.app import app, render
from broker.api.guard import refusal
from broker.api.idempotency import register_lambda_context
from broker.observability import logger, metrics, tracer


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Resolve one API Gateway REST proxy event."""
    register_lambda_context(context)
    refused, event = refusal(event)
    if refused is not None:
        return render(refused)
    return app.resolve(event, context)
