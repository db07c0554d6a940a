"""Notifications carry no secrets (issue 12): an SNS event reaches every subscriber the topic
has, so it never holds job output, its presigned URLs, a job's script or its environment; the
request's link leads its owner to them."""

from __future__ import annotations

from datetime import UTC, datetime

from broker.jobs.models import JobSpec, OutputPart, OutputResult
from broker.notifications.events import RequestEvent
from broker.requests.models import RequestRecord
from broker.requests.states import RequestState

NOW = datetime(2026, 12, 4, tzinfo=UTC)
PRIVATE = "job-output-never-published-42"
URL = "https://bucket.s3.amazonaws.com/out?X-Amz-Signature=abc"


def record(**fields: object) -> RequestRecord:
    base: dict[str, object] = {
        "request_id": "r1",
        "owner": "arn:aws:iam::1:user/alice",
        "cluster": "c",
        "state": RequestState.SUCCEEDED,
        "created_at": NOW,
        "updated_at": NOW,
        "job_id": "r0",
    }
    return RequestRecord.model_validate({**base, **fields})


def test_an_output_reads_event_has_positions_but_no_text_or_url() -> None:
    # GIVEN an output read that SUCCEEDED with inline text on stdout and a URL for stderr
    result = OutputResult(job_id="r0", parts=[
        OutputPart(stream="stdout", path="/o", size=16, length=16, eof=True, data=PRIVATE),
        OutputPart(stream="stderr", path="/e", size=9**9, length=9**9, url=URL),
    ])  # fmt: skip
    # WHEN its event is built and serialized as published
    text = RequestEvent.of(record(kind="job.output", result=result)).model_dump_json()
    event = RequestEvent.model_validate_json(text)
    # THEN neither the text nor the URL is in it; where and how much is
    assert PRIVATE not in text
    assert "X-Amz-Signature" not in text
    assert isinstance(event.result, OutputResult)
    assert [(p.stream, p.size, p.data, p.url) for p in event.result.parts] == [
        ("stdout", 16, None, None),
        ("stderr", 9**9, None, None),
    ]
    assert event.links.request == "/v1/requests/r1"


def test_a_submissions_event_has_neither_script_nor_environment() -> None:
    # GIVEN a submission whose script and environment hold a secret
    spec = JobSpec(script=f"#!/bin/sh\necho {PRIVATE}\n", environment={"APP_TOKEN": PRIVATE})
    # WHEN its event is serialized
    text = RequestEvent.of(record(kind="job.submit", spec=spec)).model_dump_json()
    # THEN the secret is not in it
    assert PRIVATE not in text
