"""What each identity mail says: subject, recipient, the link (under PUBLIC_BASE_URL, with the
token), and the restaurant's name where one is involved."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import jinja2
import pytest

from posmesh.common.mail import MailTemplates
from posmesh.common.mail.templates import describe_duration
from posmesh.common.settings import Settings

pytestmark = pytest.mark.unit

CHANGED_AT = datetime(2026, 3, 1, 14, 5, tzinfo=timezone.utc)


@pytest.fixture
def templates() -> MailTemplates:
    return MailTemplates(Settings(PUBLIC_BASE_URL="https://pos.example.com/"))


def test_verify_email_links_to_verification_with_the_token(templates):
    mail = templates.verify_email(to="ann@example.com", full_name="Ann Lee", token="tok-123",
                                  valid_for=timedelta(hours=24))

    assert (mail.to, mail.template) == ("ann@example.com", "verify_email")
    assert mail.subject == "Confirm your email address for posmesh"
    assert mail.text.startswith("Hello Ann Lee,\n")
    assert "\nhttps://pos.example.com/verify-email?token=tok-123\n" in mail.text
    assert "ann@example.com is your email address" in mail.text
    assert "works for 1 day" in mail.text
    assert "code" not in mail.text


def test_verify_email_offers_the_code_when_there_is_one(templates):
    mail = templates.verify_email(to="ann@example.com", full_name="Ann", token="t",
                                  valid_for=timedelta(minutes=30), code="482913")

    assert "Or enter this code in the app: 482913" in mail.text
    assert "works for 30 minutes" in mail.text


def test_invitation_names_the_restaurant_the_inviter_and_the_role(templates):
    mail = templates.invitation(to="cook@example.com", restaurant_name="Harbour Grill",
                                inviter_name="Olivia Owner", role="manager", token="inv-9",
                                valid_for=timedelta(days=7))

    assert mail.subject == "Olivia Owner invited you to join Harbour Grill on posmesh"
    assert "Olivia Owner invited you to join Harbour Grill on posmesh as manager." in mail.text
    assert "\nhttps://pos.example.com/invitations/accept?token=inv-9\n" in mail.text
    assert "valid for 7 days" in mail.text
    assert mail.text.rstrip().endswith("posmesh for Harbour Grill")


def test_a_line_break_in_a_restaurant_name_cannot_break_the_subject(templates):
    mail = templates.invitation(to="cook@example.com", restaurant_name="Harbour\r\nBcc: x@evil.test",
                                inviter_name="Olivia", role="staff", token="t",
                                valid_for=timedelta(days=7))

    assert mail.subject == "Olivia invited you to join Harbour Bcc: x@evil.test on posmesh"


def test_password_reset_links_to_the_reset_page_with_the_token(templates):
    mail = templates.password_reset(to="ann@example.com", full_name="Ann", token="reset me",
                                    valid_for=timedelta(hours=1))

    assert mail.subject == "Reset your posmesh password"
    assert "\nhttps://pos.example.com/reset-password?token=reset+me\n" in mail.text
    assert "posmesh account ann@example.com" in mail.text
    assert "works for 1 hour" in mail.text


def test_password_changed_says_when_and_what_to_do_if_it_was_not_you(templates):
    mail = templates.password_changed(to="ann@example.com", full_name="Ann", changed_at=CHANGED_AT)

    assert mail.subject == "Your posmesh password was changed"
    assert "was changed on 2026-03-01 14:05 UTC" in mail.text
    assert "https://pos.example.com and tell the owner" in mail.text
    assert "token" not in mail.text


def test_email_changed_notice_goes_to_the_old_address_and_names_the_new_one(templates):
    mail = templates.email_changed_notice(to="old@example.com", full_name="Ann",
                                          new_email="new@example.com", changed_at=CHANGED_AT)

    assert mail.to == "old@example.com"
    assert mail.subject == "The email address of your posmesh account was changed"
    assert "from old@example.com to new@example.com" in mail.text
    assert "2026-03-01 14:05 UTC" in mail.text


def test_links_default_to_the_local_edge():
    templates = MailTemplates(Settings(PUBLIC_BASE_URL=None, EDGE_PORT=9443))

    assert templates.link("/verify-email", token="x") == "https://localhost:9443/verify-email?token=x"


def test_a_template_variable_left_out_is_an_error_not_a_blank(templates):
    with pytest.raises(jinja2.UndefinedError):
        templates.render("verify_email", to="ann@example.com", full_name="Ann", code=None,
                         valid_for="1 day")  # no link


@pytest.mark.parametrize("duration, words", [
    (timedelta(minutes=1), "1 minute"), (timedelta(minutes=90), "90 minutes"),
    (timedelta(hours=2), "2 hours"), (timedelta(days=1), "1 day"), (timedelta(seconds=20), "1 minute"),
])
def test_durations_read_as_words(duration, words):
    assert describe_duration(duration) == words
