"""The pieces of mail delivery that need no server: what a Mail may be, the message it becomes,
SMTP_URL, how SMTP failures are judged, and the retry schedule."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import aiosmtplib
import pytest

from posmesh.common.mail import InvalidMail, Mail
from posmesh.common.mail.message import compose
from posmesh.common.mail.sender import retry_delay
from posmesh.common.mail.smtp import FailureKind, SmtpTarget, classify

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("to", ["", "ann", "ann@example.com, bob@example.com",
                                "ann@example.com\r\nBcc: eve@example.com", "Ann <ann@example.com>"])
def test_a_mail_is_to_exactly_one_plain_address(to):
    with pytest.raises(InvalidMail):
        Mail(to=to, subject="Hi", text="x")


@pytest.mark.parametrize("subject", ["", "Hi\r\nBcc: eve@example.com", "two\nlines"])
def test_a_subject_is_one_non_empty_line(subject):
    with pytest.raises(InvalidMail):
        Mail(to="ann@example.com", subject=subject, text="x")


def test_the_message_carries_a_stable_message_id_and_marks_itself_automatic():
    mail_id = uuid.UUID("00000000-0000-4000-8000-000000000001")
    mail = Mail(to="ann@example.com", subject="Hi", text="Grüße\n", html="<p>Hi</p>",
                template="verify_email")

    message = compose(mail_id, mail, mail_from="posmesh <no-reply@mail.example.com>",
                      created_at=datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc))

    assert message["Message-ID"] == "<00000000-0000-4000-8000-000000000001@mail.example.com>"
    assert message["From"] == "posmesh <no-reply@mail.example.com>"
    assert message["Date"] == "Sun, 01 Mar 2026 12:00:00 +0000"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["X-Posmesh-Template"] == "verify_email"
    assert message.get_body(("plain",)).get_content() == "Grüße\n"
    assert message.get_body(("html",)).get_content() == "<p>Hi</p>\n"


@pytest.mark.parametrize("url, expected", [
    ("smtp://127.0.0.1:1025", SmtpTarget("127.0.0.1", 1025, use_tls=False, start_tls=False)),
    ("smtp://relay.internal", SmtpTarget("relay.internal", 25, use_tls=False, start_tls=False)),
    ("smtps://mailer:p%40ss%2Fw@smtp.example.com",
     SmtpTarget("smtp.example.com", 465, use_tls=True, start_tls=False, username="mailer",
                password="p@ss/w")),
    ("smtp+starttls://mailer:secret@smtp.example.com:2525",
     SmtpTarget("smtp.example.com", 2525, use_tls=False, start_tls=True, username="mailer",
                password="secret")),
])
def test_smtp_url_forms(url, expected):
    assert SmtpTarget.from_url(url) == expected


@pytest.mark.parametrize("url", ["http://smtp.example.com", "smtp://", "smtp://user:pw@relay:25"])
def test_smtp_urls_that_are_refused(url):
    with pytest.raises(ValueError):
        SmtpTarget.from_url(url)


def test_a_redacted_smtp_url_never_shows_the_password():
    target = SmtpTarget.from_url("smtps://mailer:hunter2@smtp.example.com")

    assert target.redacted() == "smtps://mailer@smtp.example.com:465"


@pytest.mark.parametrize("exc, kind", [
    (aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(550, "no such user", "a@x")]),
     FailureKind.PERMANENT),
    (aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(450, "mailbox busy", "a@x")]),
     FailureKind.TRANSIENT),
    (aiosmtplib.SMTPDataError(554, "message rejected"), FailureKind.PERMANENT),
    (aiosmtplib.SMTPDataError(451, "try again later"), FailureKind.TRANSIENT),
    (aiosmtplib.SMTPConnectError("connection refused"), FailureKind.TRANSPORT),
    (aiosmtplib.SMTPServerDisconnected("gone"), FailureKind.TRANSPORT),
    (aiosmtplib.SMTPAuthenticationError(535, "bad credentials"), FailureKind.TRANSPORT),
    (aiosmtplib.SMTPSenderRefused(550, "not your domain", "no-reply@x"), FailureKind.TRANSPORT),
    (TimeoutError(), FailureKind.TRANSPORT),
    (OSError("network unreachable"), FailureKind.TRANSPORT),
])
def test_refusals_of_the_mail_concern_the_mail_and_everything_else_the_server(exc, kind):
    assert classify(exc).kind is kind


def test_retries_back_off_exponentially_up_to_the_cap():
    top = [retry_delay(n, base=5, cap=900, rand=lambda: 1.0) for n in range(1, 11)]

    assert top == [5, 10, 20, 40, 80, 160, 320, 640, 900, 900]


def test_jitter_spreads_each_delay_over_its_upper_half():
    assert retry_delay(3, base=5, cap=900, rand=lambda: 0.0) == 10
    assert retry_delay(3, base=5, cap=900, rand=lambda: 0.5) == 15
    assert retry_delay(200, base=5, cap=900, rand=lambda: 0.0) == 450
