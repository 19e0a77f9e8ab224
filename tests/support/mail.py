"""The mail the stack really sent, read from its dev mail server's store (never a mock).

    mail = await mailbox.wait_for(to=email, subject_contains="Confirm", timeout=10)
    token = token_from(mail)                 # the `token` of the first link in its text
    link = link_from(mail, "/verify-email")  # or the link itself

The `mailbox` fixture (tests/conftest.py) is a Mailbox on `stack.mail_dir`. Every test uses
addresses of its own (`unique_address()`), so the session's shared mailbox never confuses them.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlsplit

from stack.mail_store import MailStore, StoredMail

_LINK = re.compile(r"https?://[^\s<>\"']+")


_default: Mailbox | None = None  # the session stack's, for helpers that get only a client


def use_mailbox(mailbox: "Mailbox") -> None:
    global _default
    _default = mailbox


@contextmanager
def mailbox_in_use(mailbox: "Mailbox") -> Iterator["Mailbox"]:
    """`mailbox` as the default for the helpers meanwhile (a stack of a test's own)."""
    global _default
    previous, _default = _default, mailbox
    try:
        yield mailbox
    finally:
        _default = previous


def default_mailbox() -> "Mailbox":
    """The session stack's mailbox (set by tests/conftest.py when the stack starts)."""
    if _default is None:
        raise RuntimeError("no stack is running: its mailbox is not known")
    return _default


def unique_address(label: str = "mail") -> str:
    return f"{label}-{secrets.token_hex(6)}@example.com"


class Mailbox:
    def __init__(self, folder: Path) -> None:
        self._store = MailStore(folder)

    async def messages(self, *, to: str | None = None) -> list[StoredMail]:
        """Newest first."""
        return await asyncio.to_thread(self._store.messages, to=to)

    async def wait_for(self, *, to: str, subject_contains: str = "", timeout: float = 10.0,
                       count: int = 1) -> StoredMail:
        """The newest mail to `to` whose subject contains `subject_contains`, once at least
        `count` such mails have arrived; AssertionError (with what did arrive) after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            mails = [mail for mail in await self.messages(to=to)
                     if subject_contains in mail.subject]
            if len(mails) >= count:
                return mails[0]
            if time.monotonic() > deadline:
                seen = [mail.subject for mail in await self.messages(to=to)]
                raise AssertionError(
                    f"{count} mail(s) to {to} with {subject_contains!r} in the subject did not "
                    f"arrive within {timeout}s; arrived for that address: {seen}")
            await asyncio.sleep(0.05)


def links_in(mail: StoredMail) -> list[str]:
    return _LINK.findall(mail.text)


def link_from(mail: StoredMail, path: str | None = None) -> str:
    """The first link in the text (whose path is `path`, when given)."""
    for link in links_in(mail):
        if path is None or urlsplit(link).path == path:
            return link
    raise AssertionError(f"no link{f' to {path}' if path else ''} in the mail:\n{mail.text}")


def token_from(mail: StoredMail, path: str | None = None, param: str = "token") -> str:
    """The `param` query value of that link."""
    link = link_from(mail, path)
    values = parse_qs(urlsplit(link).query).get(param)
    if not values:
        raise AssertionError(f"the link {link} has no {param!r}")
    return values[0]
