"""The embedded local stack: the broker on one machine, shaped by ``template.yaml``.

AWS comes from a moto server on 127.0.0.1 reached by boto3 over real HTTP; the same Lambda
handlers run in this process (the API behind an API Gateway REST emulation, the workers behind
SQS event source mapping emulations); Slurm is real. See :mod:`broker.local.stack` and
``python -m broker.local --help``.

Development-only: nothing under ``broker.local`` is imported by the deployed functions, and
its third-party imports (moto, werkzeug) are dev dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.local.stack import LocalStack

__all__ = ["LocalStack"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import broker.local.template` does not pull in werkzeug and boto3.
    if name == "LocalStack":
        from broker.local.stack import LocalStack  # noqa: PLC0415

        return LocalStack
    raise AttributeError(name)
