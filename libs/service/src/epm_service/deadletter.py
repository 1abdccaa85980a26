"""Rejected input goes to EPM_DLQ with the reason in headers; nothing is silently dropped."""

from __future__ import annotations

import logging

from epm_events.subjects import dlq_subject
from nats.js import JetStreamContext

from epm_service.metrics import DEAD_LETTERS

log = logging.getLogger(__name__)

REASON = "Epm-Dlq-Reason"
DETAIL = "Epm-Dlq-Detail"
ORIGINAL_SUBJECT = "Epm-Dlq-Subject"
ORIGINAL_STREAM = "Epm-Dlq-Stream"
ORIGINAL_SEQ = "Epm-Dlq-Seq"


async def dead_letter(
    js: JetStreamContext,
    service: str,
    *,
    payload: bytes,
    subject: str,
    reason: str,
    detail: str,
    stream: str = "",
    seq: int = 0,
    msg_id: str | None = None,
) -> None:
    """Record a rejected message. The Nats-Msg-Id is derived from its position when it has one,
    so reprocessing after a crash does not record it twice (within the duplicate window)."""
    headers = {
        REASON: reason,
        DETAIL: detail[:1000],
        ORIGINAL_SUBJECT: subject,
        ORIGINAL_STREAM: stream,
        ORIGINAL_SEQ: str(seq),
    }
    if msg_id or stream:
        headers["Nats-Msg-Id"] = msg_id or f"dlq:{service}:{stream}:{seq}"
    DEAD_LETTERS.labels(service=service, reason=reason).inc()
    log.warning(
        "dead-lettered: %s",
        detail[:300],
        extra={"reason": reason, "subject": subject, "stream": stream, "seq": seq},
    )
    await js.publish(dlq_subject(service), payload[: 900 * 1024], headers=headers)
