"""Request routes: the state of one accepted write (and a page of a batch's items)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Path, Query

from broker.api import services
from broker.api.common import (
    REQUEST_ID_PATTERN,
    caller,
)
from broker.api.errors import ERROR_RESPONSES
from broker.batches.sweeps import MAX_SWEEP_ITEMS
from broker.requests.models import RequestView

router = Router()  # type: ignore[no-untyped-call]  # Powertools leaves __init__ untyped


@router.get(
    "/v1/requests/<request_id>",
    summary="Get a request's state",
    tags=["requests"],
    responses={
        HTTPStatus.OK: {
            "description": "The request.",
            "content": {"application/json": {"model": RequestView}},
        },
        **ERROR_RESPONSES,
    },
)
def get_request(
    request_id: Annotated[str, Path(pattern=REQUEST_ID_PATTERN, description="Request id.")],
    items_from: Annotated[
        int,
        Query(
            ge=0,
            le=MAX_SWEEP_ITEMS,
            description="job.batch (a batch or a sweep, up to 100,000 items): first item index.",
        ),
    ] = 0,
    items_limit: Annotated[int, Query(ge=0, le=1000, description="job.batch: page size.")] = 100,
) -> RequestView:
    """GET a request (404 if it is not the caller's); a batch with a page of its items."""
    service = services.request_service()
    record = service.get_request(caller(router.current_event), request_id)
    view = RequestView.of(record)
    if record.kind == "job.batch" and items_limit:
        size = record.batch_size or 0
        end = min(size, items_from + items_limit)
        view.item_page = service.batch_page(record, items_from, max(0, end - items_from))
        view.next_items_from = end if end < size else None
    return view
