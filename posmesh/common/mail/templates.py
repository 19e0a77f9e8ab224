"""The mails of the identity flows, rendered with Jinja2 from `templates/<name>.txt.j2`.

A template sets `subject` at its top (`{% set subject = ... %}`) and its text is the body.
Undefined variables are errors, so a mail can never go out with a blank where a link should be.
Links start with PUBLIC_BASE_URL (`Settings.public_url`).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlencode

import jinja2

from posmesh.common.mail.message import Mail
from posmesh.common.settings import Settings

TEMPLATES_DIR = Path(__file__).parent / "templates"
# Where the links in mails lead (the app or the edge answers them under PUBLIC_BASE_URL).
VERIFY_EMAIL_PATH = "/verify-email"
INVITATION_PATH = "/invitations/accept"
PASSWORD_RESET_PATH = "/reset-password"


def describe_duration(duration: timedelta) -> str:
    """'15 minutes', '1 hour', '2 days': the largest whole unit that fits."""
    seconds = int(duration.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    minutes = max(1, round(seconds / 60))
    return f"{minutes} minute{'' if minutes == 1 else 's'}"


def describe_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


class MailTemplates:
    def __init__(self, settings: Settings) -> None:
        self.public_url = settings.public_url
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
            undefined=jinja2.StrictUndefined,
            autoescape=False,  # plain text; an HTML template would need escaping switched on
            trim_blocks=True,
            keep_trailing_newline=True,
        )

    def link(self, path: str, **params: str) -> str:
        query = f"?{urlencode(params)}" if params else ""
        return f"{self.public_url}{path}{query}"

    def render(self, name: str, *, to: str, **context: object) -> Mail:
        module = self._env.get_template(f"{name}.txt.j2").make_module(
            {"to": to, "public_url": self.public_url, **context})
        # A restaurant name with a line break must not break the Subject header.
        subject = " ".join(str(module.subject).split())
        return Mail(to=to, subject=subject, text=str(module), template=name)

    def verify_email(self, *, to: str, full_name: str, token: str, valid_for: timedelta,
                     code: str | None = None) -> Mail:
        return self.render("verify_email", to=to, full_name=full_name,
                           link=self.link(VERIFY_EMAIL_PATH, token=token), code=code,
                           valid_for=describe_duration(valid_for))

    def invitation(self, *, to: str, restaurant_name: str, inviter_name: str, role: str,
                   token: str, valid_for: timedelta) -> Mail:
        return self.render("invitation", to=to, restaurant_name=restaurant_name,
                           inviter_name=inviter_name, role=role,
                           link=self.link(INVITATION_PATH, token=token),
                           valid_for=describe_duration(valid_for))

    def password_reset(self, *, to: str, full_name: str, token: str, valid_for: timedelta,
                       code: str | None = None) -> Mail:
        return self.render("password_reset", to=to, full_name=full_name,
                           link=self.link(PASSWORD_RESET_PATH, token=token), code=code,
                           valid_for=describe_duration(valid_for))

    def account_exists(self, *, to: str, full_name: str, attempted_at: datetime) -> Mail:
        """To an address someone tried to register again (registration answers the same)."""
        return self.render("account_exists", to=to, full_name=full_name,
                           attempted_at=describe_time(attempted_at))

    def password_changed(self, *, to: str, full_name: str, changed_at: datetime) -> Mail:
        return self.render("password_changed", to=to, full_name=full_name,
                           changed_at=describe_time(changed_at))

    def email_changed_notice(self, *, to: str, full_name: str, new_email: str,
                             changed_at: datetime) -> Mail:
        """To the old address (`to`), after the account moved to `new_email`."""
        return self.render("email_changed_notice", to=to, full_name=full_name,
                           new_email=new_email, changed_at=describe_time(changed_at))
