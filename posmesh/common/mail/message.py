"""A mail as the services write it (`Mail`) and as it goes over SMTP (`compose`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr


class InvalidMail(ValueError):
    """A mail that could never be sent as given: refused before it reaches the outbox."""


@dataclass(frozen=True, slots=True)
class Mail:
    """One message to one recipient. `template` names what rendered it (None: written by hand)."""

    to: str
    subject: str
    text: str
    html: str | None = None
    template: str | None = None

    def __post_init__(self) -> None:
        try:
            # One plain address; this also refuses CR/LF, so no header can be smuggled in.
            Address(addr_spec=self.to)
        except Exception as exc:
            raise InvalidMail(f"not a single email address: {self.to!r} ({exc})") from None
        if not self.subject or "\r" in self.subject or "\n" in self.subject:
            raise InvalidMail("a subject must be one non-empty line")
        if not self.text:
            raise InvalidMail("a mail needs a text body")


def sender_domain(mail_from: str) -> str:
    """The domain of MAIL_FROM's address (Message-IDs are made under it)."""
    _, address = parseaddr(mail_from)
    return address.rpartition("@")[2] or "posmesh.local"


def message_id(mail_id: uuid.UUID, mail_from: str) -> str:
    """Stable across retries, so a receiver can tell a resend from a second mail."""
    return f"<{mail_id}@{sender_domain(mail_from)}>"


def compose(mail_id: uuid.UUID, mail: Mail, *, mail_from: str, created_at: datetime) -> EmailMessage:
    message = EmailMessage()
    message["From"] = mail_from
    message["To"] = mail.to
    message["Subject"] = mail.subject
    message["Date"] = format_datetime(created_at)
    message["Message-ID"] = message_id(mail_id, mail_from)
    # RFC 3834: no vacation replies or other auto-answers to a machine.
    message["Auto-Submitted"] = "auto-generated"
    if mail.template:
        message["X-Posmesh-Template"] = mail.template
    message.set_content(mail.text)
    if mail.html is not None:
        message.add_alternative(mail.html, subtype="html")
    return message
