"""broker.local.template.schedules and the Schedule/ScheduleV2 events of functions: EventBridge's
rate, cron and at() expressions, when they fire, and how SAM's schedule events are read (no
network)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from broker.local.scheduler import build_scheduled_event
from broker.local.template import (
    Resolver,
    Template,
    TemplateError,
    parse_schedule_expression,
    read_functions,
    template_from_document,
)

REGION = "us-east-1"
ACCOUNT = "123456789012"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("rate(1 minute)", 60),
        ("rate(5 minutes)", 300),
        ("rate(1 hour)", 3600),
        ("rate(2 hours)", 7200),
        ("rate(1 day)", 86400),
        ("rate( 3 days )", 259200),
    ],
)
def test_rate_expressions_give_their_period(text: str, seconds: int) -> None:
    # GIVEN / WHEN a rate expression is parsed THEN its period is in seconds
    expression = parse_schedule_expression(text)
    assert (expression.kind, expression.period_s) == ("rate", float(seconds))


@pytest.mark.parametrize(
    "text",
    [
        "rate(1 minutes)",
        "rate(2 minute)",
        "rate(0 minutes)",
        "rate(5 seconds)",
        "rate(minute)",
        "every minute",
        "cron(* * * * *)",
        "cron(0 12 * * * *)",
        "cron(0 12 ? * ? *)",
        "cron(60 * * * ? *)",
        "cron(0 0 ? * FOO *)",
    ],
)
def test_expressions_eventbridge_refuses_are_template_errors(text: str) -> None:
    # GIVEN an expression EventBridge would refuse (singular/plural mismatch, bad unit, wrong
    # field count, both or neither day field '?', out of range, unknown name)
    # WHEN / THEN it is refused
    with pytest.raises(TemplateError):
        parse_schedule_expression(text)


@pytest.mark.parametrize(
    ("text", "after", "expected"),
    [
        # every 15 minutes
        ("cron(0/15 * * * ? *)", "2026-11-21T10:07:30", "2026-11-21T10:15:00"),
        # 10:00 on weekdays (MON-FRI): from Friday evening, the next is Monday
        ("cron(0 10 ? * MON-FRI *)", "2026-11-20T18:00:00", "2026-11-23T10:00:00"),
        # noon on the first of each month
        ("cron(0 12 1 * ? *)", "2026-11-21T00:00:00", "2026-12-01T12:00:00"),
        # 08:30 on Sundays (1) and Saturdays (7): from Saturday 09:00, Sunday
        ("cron(30 8 ? * 1,7 *)", "2026-11-21T09:00:00", "2026-11-22T08:30:00"),
        # once, in a year that ends the expression
        ("cron(0 0 1 JAN ? 2027)", "2026-11-21T00:00:00", "2027-01-01T00:00:00"),
        # strictly after: a matching minute itself is not "next"
        ("cron(0 12 * * ? *)", "2026-11-21T12:00:00", "2026-11-22T12:00:00"),
    ],
)
def test_cron_expressions_fire_at_their_next_matching_minute(
    text: str, after: str, expected: str
) -> None:
    # GIVEN a cron expression (UTC) and a moment
    expression = parse_schedule_expression(text)
    moment = datetime.fromisoformat(after).replace(tzinfo=UTC)

    # WHEN its next firing is computed
    fires = expression.next_after(moment)

    # THEN it is the first matching minute after the moment
    assert fires == datetime.fromisoformat(expected).replace(tzinfo=UTC)


def test_a_cron_that_can_never_fire_again_has_no_next() -> None:
    # GIVEN a cron limited to a past year
    expression = parse_schedule_expression("cron(0 0 1 1 ? 2020)")

    # WHEN / THEN there is no next firing
    assert expression.next_after(datetime(2026, 1, 1, tzinfo=UTC)) is None


def test_a_cron_in_a_time_zone_fires_at_that_zones_wall_clock() -> None:
    # GIVEN 09:00 every day in New York (ScheduleV2's ScheduleExpressionTimezone), in November
    expression = parse_schedule_expression("cron(0 9 * * ? *)", timezone="America/New_York")

    # WHEN the next firing after midnight UTC is computed
    fires = expression.next_after(datetime(2026, 11, 21, 0, 0, tzinfo=UTC))

    # THEN it is 09:00 EST = 14:00 UTC
    assert fires == datetime(2026, 11, 21, 14, 0, tzinfo=UTC)


def test_cron_features_not_emulated_are_accepted_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # GIVEN the last day of the month ("L"), which the local scheduler does not emulate
    with caplog.at_level(logging.WARNING, logger="broker.local.template"):
        # WHEN it is parsed
        expression = parse_schedule_expression("cron(0 12 L * ? *)")

    # THEN it is approximated (every day at 12:00) and a warning says so
    assert expression.cron is not None
    assert expression.cron.approximate is True
    assert expression.next_after(datetime(2026, 11, 21, 13, 0, tzinfo=UTC)) == datetime(
        2026, 11, 22, 12, 0, tzinfo=UTC
    )
    assert "does not emulate" in caplog.text


def test_at_is_a_one_time_schedule() -> None:
    # GIVEN a ScheduleV2 one-time expression
    expression = parse_schedule_expression("at(2026-12-24T18:00:00)")
    before = datetime(2026, 12, 1, tzinfo=UTC)

    # WHEN / THEN it fires once, at that time, and never after
    assert expression.next_after(before) == datetime(2026, 12, 24, 18, 0, tzinfo=UTC)
    assert expression.next_after(datetime(2026, 12, 25, tzinfo=UTC)) is None


def _scheduled(events: dict[str, object]) -> Template:
    return template_from_document(
        {
            "Resources": {
                "Fn": {
                    "Type": "AWS::Serverless::Function",
                    "Properties": {"Handler": "m.h", "Events": events},
                }
            }
        }
    )


def test_schedule_events_can_be_disabled_with_enabled_or_state() -> None:
    # GIVEN schedules disabled each way SAM allows, and one left enabled
    tpl = _scheduled(
        {
            "Off": {
                "Type": "Schedule",
                "Properties": {"Schedule": "rate(1 hour)", "Enabled": False},
            },
            "Stopped": {
                "Type": "Schedule",
                "Properties": {"Schedule": "rate(1 hour)", "State": "DISABLED"},
            },
            "V2Off": {
                "Type": "ScheduleV2",
                "Properties": {"ScheduleExpression": "rate(1 hour)", "State": "DISABLED"},
            },
            "On": {"Type": "Schedule", "Properties": {"Schedule": "rate(1 hour)"}},
        }
    )

    # WHEN the function is read
    (function,) = read_functions(tpl, Resolver(tpl, region=REGION, account_id=ACCOUNT))

    # THEN only the last one is enabled
    assert {e.name: e.enabled for e in function.schedule_events} == {
        "Off": False,
        "Stopped": False,
        "V2Off": False,
        "On": True,
    }


def test_a_schedule_v2_is_named_as_eventbridge_scheduler_names_it() -> None:
    # GIVEN a ScheduleV2 event with a group and an Input
    tpl = _scheduled(
        {
            "Nightly": {
                "Type": "ScheduleV2",
                "Properties": {
                    "ScheduleExpression": "cron(0 2 * * ? *)",
                    "GroupName": "ops",
                    "Input": '{"full": true}',
                },
            }
        }
    )

    # WHEN it is read
    (function,) = read_functions(tpl, Resolver(tpl, region=REGION, account_id=ACCOUNT))
    (event,) = function.schedule_events

    # THEN its ARN is a Scheduler schedule in its group, and its event is the Input
    assert event.rule_arn == f"arn:aws:scheduler:{REGION}:{ACCOUNT}:schedule/ops/FnNightly"
    assert build_scheduled_event(
        event, account_id=ACCOUNT, region=REGION, scheduled_time=datetime.now(UTC)
    ) == {"full": True}


def test_a_schedule_with_a_bad_expression_names_the_event() -> None:
    # GIVEN a Schedule event with an expression EventBridge refuses
    tpl = _scheduled({"Broken": {"Type": "Schedule", "Properties": {"Schedule": "rate(1 hours)"}}})

    # WHEN / THEN reading the functions fails, naming function and event
    with pytest.raises(TemplateError, match=r"Fn\.Events\.Broken"):
        read_functions(tpl, Resolver(tpl, region=REGION, account_id=ACCOUNT))
