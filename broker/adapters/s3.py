"""S3 artifact store: larger outputs, handed out through presigned GET URLs."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from broker.adapters.aws import translate

#: Presigned links stay valid this long (seconds); the bucket's lifecycle deletes after a day.
LINK_SECONDS = 3600


class S3ArtifactStore:
    """ArtifactStore port on S3."""

    def __init__(self, client: Any, bucket: str) -> None:
        self._s3 = client
        self._bucket = bucket

    def put_text(self, key: str, text: str) -> str:
        """Store UTF-8 text under ``key``; return a presigned GET URL (one hour)."""
        try:
            self._s3.put_object(
                Bucket=self._bucket,
                Key=key,
                Body=text.encode("utf-8"),
                ContentType="text/plain; charset=utf-8",
            )
            return str(
                self._s3.generate_presigned_url(
                    "get_object",
                    Params={"Bucket": self._bucket, "Key": key},
                    ExpiresIn=LINK_SECONDS,
                )
            )
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, "store output") from exc
