"""Emulate EventBridge schedules: invoke a function's handler on its ``Schedule``/``ScheduleV2``.

One :class:`ScheduledInvoker` per schedule event of a function in ``template.yaml``, each with
one timer thread. At every tick the thread invokes the handler with the event EventBridge
sends (a ``Scheduled Event`` for a rule, ``{}`` for a Scheduler schedule, or the event's
``Input``) and a fresh :class:`~broker.local.context.LambdaContext`:

* **period**: the expression's own (``rate(1 minute)``: 60 s; a ``cron(...)``: its next matching
  minute; ``at(...)``: once), unless ``period_s`` overrides it, so a local user sees work happen
  in seconds rather than minutes. As with EventBridge, the first tick is one period after start.
* **one invocation at a time per function**: the invokers of one function share a lock, like a
  function with ``ReservedConcurrentExecutions: 1``. A tick that falls while an invocation runs
  is skipped and counted (``skipped``), never queued.
* **errors** are logged and counted; the thread goes on with the next tick. Lambda would retry a
  failed asynchronous invocation up to twice; locally the next tick is the retry.
* :meth:`ScheduledInvoker.trigger` runs one invocation in the caller's thread (waiting for a
  running one to finish first) and returns the handler's result, or raises its exception.

The handler cannot be interrupted at its ``Timeout`` (it runs in a thread); an overrun is logged.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from broker.local.context import LambdaContext
from broker.local.template import ScheduleEventDef

__all__ = ["ScheduleStats", "ScheduledInvoker", "build_scheduled_event"]

logger = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], Any], Any]

_MIN_PERIOD_S: Final = 0.01


@dataclass(frozen=True)
class ScheduleStats:
    """Counters of one schedule since its stack started."""

    function: str
    event: str
    expression: str
    period_s: float | None
    enabled: bool
    invocations: int
    errors: int
    skipped: int
    last_duration_s: float | None
    last_error: str | None


def _iso_z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_scheduled_event(
    event: ScheduleEventDef, *, account_id: str, region: str, scheduled_time: datetime
) -> Any:
    """The event the function receives for one tick of ``event``.

    A ``Schedule`` (EventBridge rule) without ``Input`` sends EventBridge's ``Scheduled Event``
    envelope, naming the rule in ``resources`` and the scheduled time in ``time``. With
    ``Input``, both rules and Scheduler schedules pass the JSON as is; a ``ScheduleV2`` without
    one sends ``{}`` (Scheduler's templated Lambda target has no envelope of its own).
    """
    if event.input is not None:
        return json.loads(event.input)
    if event.type == "ScheduleV2":
        return {}
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account_id,
        "time": _iso_z(scheduled_time),
        "region": region,
        "resources": [event.rule_arn],
        "detail": {},
    }


class ScheduledInvoker:
    """One schedule event of one function: a timer thread plus synchronous :meth:`trigger`.

    Args:
        function_logical_id: the function's logical id (``SweeperFunction``).
        function_name: its local name (for the Lambda context and logs).
        handler: its ``lambda_handler``.
        event: the schedule as read from the template.
        region / account_id: for the event and the Lambda context's ARN.
        timeout_s / memory_mb: the function's ``Timeout`` and ``MemorySize``.
        period_s: seconds between ticks, instead of the expression's (``None``: the
            expression's own; a one-time ``at()`` is never overridden).
        lock: held during each invocation; pass the same lock to every invoker of a function,
            so that its invocations never overlap.
    """

    def __init__(
        self,
        *,
        function_logical_id: str,
        function_name: str,
        handler: Handler,
        event: ScheduleEventDef,
        region: str,
        account_id: str,
        timeout_s: float = 30.0,
        memory_mb: int = 512,
        period_s: float | None = None,
        lock: threading.Lock | None = None,
    ) -> None:
        if period_s is not None and period_s < _MIN_PERIOD_S:
            raise ValueError(f"period_s must be at least {_MIN_PERIOD_S}")
        self.function_logical_id = function_logical_id
        self.function_name = function_name
        self.handler = handler
        self.event = event
        self.region = region
        self.account_id = account_id
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.period_s = period_s if event.expression.kind != "at" else None
        self._invoke_lock = lock or threading.Lock()
        self._stats_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._invocations = 0
        self._errors = 0
        self._skipped = 0
        self._last_duration_s: float | None = None
        self._last_error: str | None = None

    @property
    def name(self) -> str:
        """``<function>/<event>``, e.g. ``SweeperFunction/Sweep``."""
        return f"{self.function_logical_id}/{self.event.name}"

    @property
    def effective_period_s(self) -> float | None:
        """Seconds between ticks: the override, else a rate's period (``None``: cron or at)."""
        if self.period_s is not None:
            return self.period_s
        return self.event.expression.period_s

    def describe(self) -> str:
        """One line for banners: the expression and how often it fires here."""
        expression = self.event.expression.text
        if not self.event.enabled:
            return f"{expression} (disabled)"
        if self.period_s is not None:
            return f"{expression}, locally every {self.period_s:g} s"
        return expression

    def start(self) -> None:
        """Start the timer thread (a disabled schedule has none: only :meth:`trigger` runs it)."""
        if self._thread is not None:
            raise RuntimeError(f"schedule {self.name} already started")
        if not self.event.enabled:
            logger.info("%s: schedule disabled in the template, not started", self.name)
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"schedule-{self.name}", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the thread to stop at its next wake-up (no wait)."""
        self._stop.set()

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Stop the timer and wait for a running invocation to end (bounded).

        Returns:
            Whether the thread ended in time (one stuck in a slow handler may not).
        """
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        thread.join(timeout_s)
        if thread.is_alive():
            logger.warning("%s still running after %.1fs", thread.name, timeout_s)
            return False
        return True

    @property
    def running(self) -> bool:
        """Whether the timer thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def trigger(self, timeout_s: float | None = None) -> Any:
        """Invoke once now, in this thread, after any running invocation of the function.

        Args:
            timeout_s: how long to wait for a running invocation (``None``: as long as it takes).

        Returns:
            What the handler returned.

        Raises:
            TimeoutError: a running invocation did not finish within ``timeout_s``.
            Exception: whatever the handler raised (also counted as an error).
        """
        acquired = self._invoke_lock.acquire(timeout=-1 if timeout_s is None else timeout_s)
        if not acquired:
            raise TimeoutError(f"{self.name}: the running invocation did not end in {timeout_s}s")
        try:
            return self._invoke(datetime.now(UTC), reraise=True)
        finally:
            self._invoke_lock.release()

    def stats(self) -> ScheduleStats:
        """A snapshot of the counters."""
        with self._stats_lock:
            return ScheduleStats(
                function=self.function_name,
                event=self.event.name,
                expression=self.event.expression.text,
                period_s=self.effective_period_s,
                enabled=self.event.enabled,
                invocations=self._invocations,
                errors=self._errors,
                skipped=self._skipped,
                last_duration_s=self._last_duration_s,
                last_error=self._last_error,
            )

    def stats_dict(self) -> dict[str, Any]:
        """:meth:`stats` as a plain dict (for JSON status output)."""
        return asdict(self.stats())

    # -- the timer ------------------------------------------------------------------------------

    def _next_due(self, after: datetime) -> datetime | None:
        if self.period_s is not None:
            return after + timedelta(seconds=self.period_s)
        return self.event.expression.next_after(after)

    def _run(self) -> None:
        due = self._next_due(datetime.now(UTC))
        while due is not None:
            delay = (due - datetime.now(UTC)).total_seconds()
            if self._stop.wait(max(0.0, delay)):
                return
            if self._invoke_lock.acquire(blocking=False):
                try:
                    self._invoke(due, reraise=False)
                except Exception:  # a schedule must never die: _invoke logs handler errors
                    logger.exception("%s: invocation machinery failed", self.name)
                finally:
                    self._invoke_lock.release()
            else:
                # Another invocation of the function runs (a trigger(), or a sibling schedule).
                self._count_skipped(1)
            due = self._after_skipping(due)

    def _after_skipping(self, previous: datetime) -> datetime | None:
        """The next due time after ``previous``, skipping (and counting) those already past.

        Ticks that fell while the invocation ran are dropped, as a function limited to one
        concurrent execution drops them, rather than fired in a burst afterwards.
        """
        now = datetime.now(UTC)
        due = self._next_due(previous)
        missed = 0
        while due is not None and due <= now:
            missed += 1
            due = self._next_due(due)
        if missed:
            self._count_skipped(missed)
            logger.debug("%s: skipped %d tick(s) while the previous one ran", self.name, missed)
        return due

    def _count_skipped(self, n: int) -> None:
        with self._stats_lock:
            self._skipped += n

    def _invoke(self, scheduled_time: datetime, *, reraise: bool) -> Any:
        payload = build_scheduled_event(
            self.event,
            account_id=self.account_id,
            region=self.region,
            scheduled_time=scheduled_time,
        )
        context = LambdaContext.for_invocation(
            function_name=self.function_name,
            timeout_s=self.timeout_s,
            memory_mb=self.memory_mb,
            region=self.region,
            account_id=self.account_id,
        )
        started = time.monotonic()
        error: str | None = None
        try:
            return self.handler(payload, context)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if reraise:
                raise
            logger.exception("%s raised; the next tick runs as scheduled", self.name)
            return None
        finally:
            duration = time.monotonic() - started
            with self._stats_lock:
                self._invocations += 1
                self._last_duration_s = duration
                if error is not None:
                    self._errors += 1
                    self._last_error = error
            if context.overran:
                logger.warning(
                    "%s took %.1fs, longer than its %ss timeout (AWS would have stopped it)",
                    self.name,
                    duration,
                    self.timeout_s,
                )
