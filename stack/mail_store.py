"""Reading the dev mail server's Maildir: what `posmesh mail` prints and the tests wait for."""

from __future__ import annotations

import mailbox
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

_parser = BytesParser(policy=policy.default)


@dataclass(frozen=True)
class StoredMail:
    key: str  # the Maildir's name for it
    received_at: datetime  # when the server stored it (local time)
    message: EmailMessage

    @property
    def to(self) -> str:
        """The envelope recipients (what the sender asked the server for), else the To header."""
        return str(self.message.get("X-RcptTo") or self.message.get("To", ""))

    @property
    def subject(self) -> str:
        return str(self.message.get("Subject", ""))

    @property
    def message_id(self) -> str:
        return str(self.message.get("Message-ID", ""))

    @property
    def text(self) -> str:
        part = self.message.get_body(preferencelist=("plain",))
        return part.get_content() if part is not None else ""

    @property
    def html(self) -> str | None:
        part = self.message.get_body(preferencelist=("html",))
        return part.get_content() if part is not None else None

    def is_to(self, address: str) -> bool:
        wanted = address.strip().lower()
        return any(part.strip().lower() == wanted for part in self.to.split(","))


class MailStore:
    """A Maildir read again on every call (the server keeps adding); parsed messages are cached
    by key, since a stored message never changes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._parsed: dict[str, StoredMail] = {}

    def exists(self) -> bool:
        return (self.folder / "new").is_dir() or (self.folder / "cur").is_dir()

    def messages(self, *, to: str | None = None) -> list[StoredMail]:
        """Newest first; only those to `to` when given."""
        if not self.exists():
            return []
        maildir = mailbox.Maildir(self.folder, create=False)
        mails = []
        for key in maildir.keys():
            mail = self._parsed.get(key)
            if mail is None:
                try:
                    # The Maildir message's date is the file's delivery time; the bytes are
                    # parsed again with the modern policy (get_body, decoded content).
                    delivered = maildir.get_message(key).get_date()
                    raw = maildir.get_bytes(key)
                except KeyError:
                    continue  # removed meanwhile
                mail = StoredMail(key, datetime.fromtimestamp(delivered), _parser.parsebytes(raw))
                self._parsed[key] = mail
            if to is None or mail.is_to(to):
                mails.append(mail)
        mails.sort(key=lambda mail: (mail.received_at, mail.key), reverse=True)
        return mails
