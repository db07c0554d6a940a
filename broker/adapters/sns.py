"""SNS notifier: one topic, versioned JSON events, message attributes for filter policies."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from broker.adapters.aws import translate
from broker.notifications.events import Event


class SnsNotifier:
    """Notifier port on SNS."""

    def __init__(self, client: Any, topic_arn: str) -> None:
        self._sns = client
        self._topic = topic_arn

    def publish(self, event: Event) -> None:
        """Publish the event as JSON with its attributes (type, cluster, owner, state)."""
        attributes = {
            name: {"DataType": "String", "StringValue": value}
            for name, value in event.attributes().items()
        }
        try:
            self._sns.publish(
                TopicArn=self._topic,
                Message=event.model_dump_json(exclude_none=True),
                Subject=f"hpc-broker {event.type} {event.new_state.value}"[:100],
                MessageAttributes=attributes,
            )
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, "publish notification") from exc
