"""A stand-in for the Lambda runtime's context object, one per local invocation.

It carries the attributes Powertools and handlers read (``function_name``, ``memory_limit_in_mb``,
``invoked_function_arn``, ``aws_request_id`` …) and a real ``get_remaining_time_in_millis()``
counting down from the function's ``Timeout`` in ``template.yaml``. The local stack cannot kill
a handler that overruns (it runs in a thread); callers log the overrun instead.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LambdaContext:
    """The attributes of ``awslambdaric``'s ``LambdaContext`` that code actually reads."""

    function_name: str
    invoked_function_arn: str
    memory_limit_in_mb: int
    timeout_s: float
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = ""
    log_stream_name: str = ""
    identity: Any = None
    client_context: Any = None
    tenant_id: str | None = None
    _deadline: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_s
        if not self.log_group_name:
            self.log_group_name = f"/aws/lambda/{self.function_name}"
        if not self.log_stream_name:
            day = time.strftime("%Y/%m/%d", time.gmtime())
            self.log_stream_name = f"{day}/[{self.function_version}]{uuid.uuid4().hex}"

    @classmethod
    def for_invocation(
        cls,
        *,
        function_name: str,
        timeout_s: float,
        memory_mb: int,
        region: str,
        account_id: str,
    ) -> LambdaContext:
        """A fresh context (new request id, full time budget) for one invocation."""
        arn = f"arn:aws:lambda:{region}:{account_id}:function:{function_name}"
        return cls(
            function_name=function_name,
            invoked_function_arn=arn,
            memory_limit_in_mb=memory_mb,
            timeout_s=timeout_s,
        )

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the function's timeout (never negative)."""
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    @property
    def overran(self) -> bool:
        """Whether the invocation took longer than the function's timeout."""
        return time.monotonic() > self._deadline
