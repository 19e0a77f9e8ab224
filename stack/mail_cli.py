"""`posmesh mail`: the mail the dev mail server has stored, newest first.

    posmesh mail [--to ADDRESS] [--limit N]   one line each: number, time, to, subject
    posmesh mail show N                       the N-th of that list (1 = newest), with its text
    posmesh mail last [--to ADDRESS]          the newest (to ADDRESS)
"""

from __future__ import annotations

import sys
from pathlib import Path

from stack.mail_store import MailStore, StoredMail


def _store(folder: Path) -> MailStore | None:
    store = MailStore(folder)
    if not store.exists():
        print(f"no mail stored in {folder} (the dev mail server stores mail there while "
              "`posmesh run` runs without SMTP_URL)", file=sys.stderr)
        return None
    return store


def list_mail(folder: Path, *, to: str | None, limit: int) -> int:
    store = _store(folder)
    if store is None:
        return 1
    mails = store.messages(to=to)
    if not mails:
        print("no mail" + (f" to {to}" if to else ""))
        return 0
    for number, mail in enumerate(mails[:limit], start=1):
        print(f"{number:>4}  {mail.received_at:%Y-%m-%d %H:%M:%S}  {mail.to:<36}  {mail.subject}")
    if len(mails) > limit:
        print(f"({len(mails) - limit} older not shown; --limit N shows more)")
    return 0


def show_mail(folder: Path, *, number: int | None = None, to: str | None = None) -> int:
    """The `number`-th newest mail (of those to `to`), or the newest when no number is given."""
    store = _store(folder)
    if store is None:
        return 1
    mails = store.messages(to=to)
    index = (number or 1) - 1
    if not 0 <= index < len(mails):
        what = f"mail number {number}" if number else "mail"
        print(f"no {what}" + (f" to {to}" if to else "") + f" ({len(mails)} stored)", file=sys.stderr)
        return 1
    print(describe(mails[index]))
    return 0


def describe(mail: StoredMail) -> str:
    message = mail.message
    lines = [f"{name}: {message[name]}" for name in ("From", "To", "Date", "Subject", "Message-ID")
             if message[name] is not None]
    lines.append(f"Received: {mail.received_at:%Y-%m-%d %H:%M:%S} (file {mail.key})")
    lines += ["", mail.text.rstrip("\n")]
    if mail.html is not None:
        lines += ["", "(this mail also has an HTML part)"]
    return "\n".join(lines)
