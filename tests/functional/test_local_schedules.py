"""broker.local.scheduler through LocalStack: schedule events of the template invoke their
function with EventBridge's event, at an overridable period, one invocation at a time.

The stack runs tests/functional/local_stack_template.yaml: ScheduledFunction has three
schedules, Tick (Schedule, rate(1 minute)), Tock (ScheduleV2, a cron, with an Input) and Paused
(Enabled: false). Its handler (tests/functional/local_handlers.py) records each call and can be
made slow or failing. No assertion depends on timing beyond "eventually".
"""

from __future__ import annotations

import importlib
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel

from broker.local import __main__ as cli
from broker.local.scheduler import ScheduleStats
from broker.local.stack import LocalStack
from broker.local.template import LocalStackError

TEST_TEMPLATE = Path(__file__).resolve().parent / "local_stack_template.yaml"
PERIOD_S = 0.2
WAIT_S = 20.0


def _wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")


def _handlers() -> ModuleType:
    # Imported by the stack (after it set the environment); fetched here, never imported first.
    return importlib.import_module("tests.functional.local_handlers")


@pytest.fixture(scope="class")
def ticking() -> Iterator[LocalStack]:
    """The test stack with every schedule ticking every PERIOD_S seconds."""
    with LocalStack(TEST_TEMPLATE, access_log=False, schedule_seconds=PERIOD_S) as stack:
        yield stack


@pytest.fixture(scope="class")
def manual() -> Iterator[LocalStack]:
    """The test stack with the timers off: only trigger() invokes."""
    with LocalStack(TEST_TEMPLATE, access_log=False, schedules_enabled=False) as stack:
        yield stack


@pytest.fixture(autouse=True)
def _fresh_handler() -> Iterator[None]:
    """Each test starts with no recorded call and a fast, succeeding handler."""
    _handlers().reset_schedule()
    yield
    _handlers().reset_schedule()


def _tick_events() -> list[Any]:
    return [
        event
        for event, _ in _handlers().scheduled_calls()
        if isinstance(event, dict) and event.get("detail-type")
    ]


def _stats(stack: LocalStack, name: str = "ScheduledFunction/Tick") -> ScheduleStats:
    return stack.schedule_stats()[name]


class TestTimers:
    """Schedules ticking on their own, every PERIOD_S seconds."""

    def test_a_schedule_ticks_at_the_overridden_period(self, ticking: LocalStack) -> None:
        # GIVEN Tick's template rate is one minute, overridden to PERIOD_S
        before = _stats(ticking)

        # WHEN the stack runs for a while (events of earlier ticks may predate `before`, so
        # wait on the invocations counted since then)
        _wait_until(lambda: _stats(ticking).invocations - before.invocations >= 2)

        # THEN Tick invoked the function repeatedly, and its stats count that, at the
        # overridden period
        after = _stats(ticking)
        assert after.invocations - before.invocations >= 2
        assert after.period_s == PERIOD_S
        assert after.last_duration_s is not None

    def test_a_slow_function_never_runs_twice_at_once(self, ticking: LocalStack) -> None:
        # GIVEN a handler slower than the period, on a function with two ticking schedules
        handlers = _handlers()
        before = ticking.schedule_stats()
        handlers.set_schedule_mode(sleep_s=2 * PERIOD_S)

        # WHEN several slow invocations have run
        _wait_until(lambda: len(handlers.scheduled_calls()) >= 4)

        # THEN never two at once: the ticks that fell during an invocation were skipped
        assert handlers.schedule_max_active() == 1
        after = ticking.schedule_stats()
        skipped = sum(after[k].skipped - before[k].skipped for k in after)
        assert skipped > 0

    def test_the_event_is_an_eventbridge_scheduled_event_naming_the_rule(
        self, ticking: LocalStack
    ) -> None:
        # GIVEN / WHEN Tick (a Schedule event without Input) has fired
        _wait_until(lambda: len(_tick_events()) >= 1)
        event = _tick_events()[0]

        # THEN it is EventBridge's "Scheduled Event" for the local rule, which Powertools' own
        # EventBridge model accepts
        EventBridgeModel.model_validate(event)
        account = ticking.account_id
        assert event["detail-type"] == "Scheduled Event"
        assert event["source"] == "aws.events"
        assert event["resources"] == [
            f"arn:aws:events:us-east-1:{account}:rule/hpcb-local-ScheduledFunctionTick"
        ]
        assert event["detail"] == {}
        assert (event["version"], event["account"], event["region"]) == (
            "0",
            account,
            "us-east-1",
        )
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", event["time"])

    def test_the_function_gets_a_lambda_context_with_its_timeout(self, ticking: LocalStack) -> None:
        # GIVEN / WHEN a scheduled invocation ran
        _wait_until(lambda: len(_handlers().scheduled_calls()) >= 1)
        _, context = _handlers().scheduled_calls()[0]

        # THEN its context names the function and counts down from the template's 5 s Timeout
        assert context.function_name == "hpcb-local-ScheduledFunction"
        assert 0 <= context.get_remaining_time_in_millis() <= 5_000

    def test_a_raising_handler_does_not_stop_the_schedule(self, ticking: LocalStack) -> None:
        # GIVEN a handler that raises on every call, and has raised a few times
        handlers = _handlers()
        errors_before = _stats(ticking).errors
        handlers.set_schedule_mode(fail=True)
        _wait_until(lambda: _stats(ticking).errors >= errors_before + 2)

        # WHEN it stops failing
        handlers.set_schedule_mode(fail=False)
        invocations = _stats(ticking).invocations

        # THEN the schedule kept its timer through the errors and goes on invoking
        _wait_until(lambda: _stats(ticking).invocations > invocations + 1)
        last_error = _stats(ticking).last_error
        assert last_error is not None
        assert "asked to fail" in last_error
        assert ticking.schedule("ScheduledFunction/Tick").running

    def test_a_disabled_schedule_has_no_timer(self, ticking: LocalStack) -> None:
        # GIVEN Paused is "Enabled: false" in the template
        # WHEN the stack runs with timers on
        paused = ticking.schedule("ScheduledFunction/Paused")

        # THEN it has no timer thread, and says so
        assert not paused.running
        assert paused.describe().endswith("(disabled)")
        assert ticking.schedule("ScheduledFunction/Tick").running

    def test_trigger_waits_for_the_running_invocation(self, ticking: LocalStack) -> None:
        # GIVEN a slow handler that the timers keep invoking
        handlers = _handlers()
        handlers.set_schedule_mode(sleep_s=2 * PERIOD_S)
        _wait_until(lambda: len(handlers.scheduled_calls()) >= 1)

        # WHEN Tick is also triggered by hand
        result = ticking.trigger("ScheduledFunction/Tick")

        # THEN it ran after the running one, never beside it
        assert result["call"] >= 2
        assert handlers.schedule_max_active() == 1


class TestTrigger:
    """Timers off: only LocalStack.trigger invokes the scheduled function."""

    def test_trigger_runs_one_invocation_synchronously(self, manual: LocalStack) -> None:
        # GIVEN timers off: nothing invokes the function by itself
        handlers = _handlers()
        before = _stats(manual).invocations

        # WHEN Tick is triggered
        result = manual.trigger("ScheduledFunction/Tick")

        # THEN the handler ran to completion within the call: its answer is returned, and its
        # call was the one and only
        calls = handlers.scheduled_calls()
        assert result == {"call": 1}
        assert len(calls) == 1
        assert calls[0][0]["detail-type"] == "Scheduled Event"
        assert _stats(manual).invocations == before + 1

    def test_trigger_raises_what_the_handler_raised(self, manual: LocalStack) -> None:
        # GIVEN a failing handler
        _handlers().set_schedule_mode(fail=True)
        before = _stats(manual).errors

        # WHEN Tick is triggered THEN the caller sees the handler's exception, and it is counted
        with pytest.raises(RuntimeError, match="asked to fail"):
            manual.trigger("ScheduledFunction/Tick")
        assert _stats(manual).errors == before + 1

    def test_a_schedule_input_replaces_the_default_event(self, manual: LocalStack) -> None:
        # GIVEN Tock (ScheduleV2) has Input '{"from": "tock"}'
        # WHEN it is triggered
        manual.trigger("ScheduledFunction/Tock")

        # THEN the function receives that JSON as its event
        assert _handlers().scheduled_calls()[0][0] == {"from": "tock"}

    def test_trigger_needs_an_unambiguous_schedule_name(self, manual: LocalStack) -> None:
        # GIVEN ScheduledFunction has three schedules
        # WHEN / THEN naming only the function is refused, listing the choices; so is a typo
        with pytest.raises(LocalStackError, match="ScheduledFunction/Tick"):
            manual.trigger("ScheduledFunction")
        with pytest.raises(LocalStackError, match="no schedule"):
            manual.trigger("NoSuchFunction")


class TestCli:
    """`python -m broker.local up` options for schedules (parsing only, no stack)."""

    def test_up_ticks_every_two_seconds_by_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # GIVEN no HPCB_LOCAL_SCHEDULE_SECONDS in the environment
        monkeypatch.delenv(cli.SCHEDULE_SECONDS_ENV, raising=False)

        # WHEN `up` is parsed without options
        args = cli.build_parser().parse_args(["up"])

        # THEN schedules tick every 2 s, timers on
        assert args.schedule_seconds == 2.0
        assert args.no_schedules is False

    def test_the_environment_sets_the_default_period(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # GIVEN HPCB_LOCAL_SCHEDULE_SECONDS=0 (the template's own schedule)
        monkeypatch.setenv(cli.SCHEDULE_SECONDS_ENV, "0")

        # WHEN `up` is parsed THEN that is the default; an option still wins
        assert cli.build_parser().parse_args(["up"]).schedule_seconds == 0.0
        parsed = cli.build_parser().parse_args(["up", "--schedule-seconds", "0.5"])
        assert parsed.schedule_seconds == 0.5
