"""The OpenAPI document is the contract: schemathesis finds no request that breaks it.

A bounded run (every operation: the coverage phase's boundary and malformed cases, then
MAX_EXAMPLES generated ones each) against the API handler in-process, behind the local API
Gateway adapter, on the template's table and queues in moto. ``make fuzz`` runs a long one with
stateful links (tests/functional/fuzz_harness.py).
"""

from __future__ import annotations

import pytest

from tests.functional.fuzz_harness import CHECKS, config, fuzz_stack, run

#: Generated cases per operation on top of the coverage phase (about 1,200 cases in all).
MAX_EXAMPLES = 15
#: A fixed seed: the same cases on every run (``make fuzz`` draws new ones).
SEED = 20261203


@pytest.mark.timeout(600)
def test_no_request_breaks_the_openapi_contract(moto_url: str) -> None:
    # GIVEN the API on moto, and schemathesis reading its /v1/openapi.json
    with fuzz_stack(moto_url) as app:
        # WHEN it sends over 1,000 valid, boundary and malformed requests, checking every answer
        report = run(app, config(max_examples=MAX_EXAMPLES, stateful=False, seed=SEED))
    # THEN it ran that many, and no answer broke a check (5xx, undocumented status or body,
    # a valid request refused, an invalid one accepted)
    print(f"fuzz: {report.total} cases {report.cases}")
    assert report.total >= 1000, report.cases
    assert report.errors == []
    assert report.failures == [], f"{len(report.failures)} failure(s) of {CHECKS}:\n" + "\n".join(
        report.failures
    )
