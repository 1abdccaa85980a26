"""E-mail adapter: SMTP per ``EPM_SMTP_URL`` (aiosmtplib).

``smtp://[user:pass@]host[:port][?starttls=true&from=addr]``, ``smtps://`` for TLS
from the first byte. The Message-ID is derived from the notification id, so
a mail sent twice (at-least-once) is recognisably the same mail.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib
import orjson

from epm_notify.retry import Delivered, NotDelivered, Outcome

_TRUE = ("1", "true", "yes", "on")
SMTP_URL_FORMS = (
    "smtp://host:25, smtp://user:pass@host:587?starttls=true or smtps://host:465"
    " (a from=addr query parameter sets the sender)"
)


class SmtpUrlError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class SmtpServer:
    host: str
    port: int
    use_tls: bool
    start_tls: bool
    username: str | None
    password: str | None
    mail_from: str | None

    @classmethod
    def parse(cls, url: str) -> SmtpServer:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise SmtpUrlError(f"EPM_SMTP_URL must look like {SMTP_URL_FORMS}")
        query = parse_qs(parts.query)
        use_tls = parts.scheme == "smtps"
        start_tls = not use_tls and query.get("starttls", ["false"])[0].lower() in _TRUE
        try:
            port = parts.port or (465 if use_tls else 587 if start_tls else 25)
        except ValueError:
            raise SmtpUrlError("EPM_SMTP_URL has a port that is not a number") from None
        return cls(
            host=parts.hostname,
            port=port,
            use_tls=use_tls,
            start_tls=start_tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            mail_from=query.get("from", [None])[0],
        )

    def __repr__(self) -> str:  # the password stays out of logs
        return f"SmtpServer(host={self.host!r}, port={self.port}, tls={self.use_tls})"


def message(mail_from: str, to: str, notification_id: str, payload: bytes) -> EmailMessage:
    content = orjson.loads(payload)
    msg = EmailMessage()
    msg["From"] = mail_from
    msg["To"] = to
    msg["Subject"] = content["subject"]
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = f"<{notification_id}@epm-notify>"
    msg["X-EPM-Notification-Id"] = notification_id
    msg.set_content(content["text"])
    return msg


class MailSender:
    def __init__(self, server: SmtpServer | None, mail_from: str, timeout: float) -> None:
        self.server = server
        self.mail_from = server.mail_from if server and server.mail_from else mail_from
        self.timeout = timeout

    async def send(
        self, target: dict[str, Any], secret: str | None, notification_id: str, payload: bytes
    ) -> Outcome:
        s = self.server
        if s is None:
            return NotDelivered("no SMTP server configured: set EPM_SMTP_URL", permanent=True)
        mail = message(self.mail_from, target["to"], notification_id, payload)
        try:
            await aiosmtplib.send(
                mail,
                hostname=s.host,
                port=s.port,
                username=s.username,
                password=s.password,
                use_tls=s.use_tls,
                start_tls=s.start_tls,
                timeout=self.timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused:
            return NotDelivered("SMTP server refused the recipient", permanent=True)
        except aiosmtplib.SMTPResponseException as exc:
            return NotDelivered(f"SMTP answered {exc.code}", permanent=500 <= exc.code < 600)
        except (aiosmtplib.SMTPException, OSError) as exc:
            return NotDelivered(f"SMTP server unreachable ({type(exc).__name__})")
        return Delivered()
