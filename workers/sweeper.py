"""Sweeper Lambda (``workers.sweeper.lambda_handler``), fired by an EventBridge schedule.

Each invocation sweeps once, or every HPCB_SWEEP_INTERVAL_SECONDS for
HPCB_SWEEP_WINDOW_SECONDS (EventBridge fires at most once a minute; sweeping several times per
invocation keeps notification latency near the interval). Reserved concurrency 1 in the
template keeps sweeps from overlapping; they would still be safe (conditional writes).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from broker.observability import logger, metrics, tracer
from broker.settings import sweeper_settings
from broker.sweep.status import sweep_for
from broker.wiring import sweeper


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Run the sweep(s) of one scheduled invocation; return the last report."""
    settings = sweeper_settings()
    reports = sweep_for(
        settings.sweep_window_seconds, settings.sweep_interval_seconds, sweeper().sweep
    )
    for report in reports:
        metrics.add_metric(
            name="SweepHeadNodeCommands", unit="Count", value=report.head_node_commands
        )
        metrics.add_metric(name="SweepTransitions", unit="Count", value=report.transitions)
        metrics.add_metric(name="SweepRequeued", unit="Count", value=report.requeued)
        metrics.add_metric(name="SweepBatchItemsLost", unit="Count", value=report.items_lost)
        if report.errors:
            logger.warning("sweep errors", extra={"errors": report.errors})
    last = asdict(reports[-1])
    logger.info("sweep done", extra={"sweeps": len(reports), **last})
    return last
