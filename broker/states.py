"""Request states: moved to ``broker.requests.states``.

Kept only because ``broker.models`` and the DynamoDB adapters, edited on other branches now,
import this path; their import lines move when ``broker.models`` is split into the packages.
New code imports ``broker.requests.states``.
"""

from broker.requests.states import TRANSITIONS, RequestState, can_transition, sources_of

__all__ = ["TRANSITIONS", "RequestState", "can_transition", "sources_of"]
