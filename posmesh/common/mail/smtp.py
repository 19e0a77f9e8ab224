"""Where mail goes (`SMTP_URL`) and what an SMTP failure means for the mail that met it."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import aiosmtplib

_SCHEMES = {
    # scheme: (implicit TLS, STARTTLS, default port)
    "smtp": (False, False, 25),
    "smtp+starttls": (False, True, 587),
    "smtps": (True, False, 465),
}


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    use_tls: bool
    start_tls: bool
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> "SmtpTarget":
        """smtp://host:port (no TLS: local relays, the dev server), smtp+starttls://user:pass@host:587,
        smtps://user:pass@host:465. User and password are percent-decoded."""
        parts = urlsplit(url)
        if parts.scheme not in _SCHEMES:
            raise ValueError(f"SMTP_URL must start with one of {', '.join(s + '://' for s in _SCHEMES)}")
        if not parts.hostname:
            raise ValueError("SMTP_URL has no host")
        use_tls, start_tls, default_port = _SCHEMES[parts.scheme]
        username = unquote(parts.username) if parts.username else None
        if username and not (use_tls or start_tls):
            # A password in the clear on the wire: refuse rather than leak it.
            raise ValueError("SMTP_URL with credentials needs smtps:// or smtp+starttls://")
        return cls(host=parts.hostname, port=parts.port or default_port, use_tls=use_tls,
                   start_tls=start_tls, username=username,
                   password=unquote(parts.password) if parts.password else None)

    def redacted(self) -> str:
        """For logs and banners: never the password."""
        scheme = "smtps" if self.use_tls else "smtp+starttls" if self.start_tls else "smtp"
        user = f"{self.username}@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}"

    def client(self, timeout: float) -> aiosmtplib.SMTP:
        """`timeout` bounds each SMTP command. TLS certificates are verified."""
        return aiosmtplib.SMTP(hostname=self.host, port=self.port, use_tls=self.use_tls,
                               start_tls=self.start_tls, username=self.username,
                               password=self.password, timeout=timeout)


class FailureKind(enum.Enum):
    PERMANENT = "permanent"  # the server refused this mail (5xx): retrying cannot help
    TRANSIENT = "transient"  # the server deferred this mail (4xx): retry it later
    TRANSPORT = "transport"  # the server could not be reached or used: retry, and pause sending


@dataclass(frozen=True, slots=True)
class DeliveryFailure:
    kind: FailureKind
    error: str


def _by_code(code: int) -> FailureKind:
    return FailureKind.PERMANENT if 500 <= code < 600 else FailureKind.TRANSIENT


def classify(exc: BaseException) -> DeliveryFailure:
    """Refusals of this recipient or this message concern the mail; anything else (connection,
    timeout, TLS, login, a refused sender address) concerns the server or its settings."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        kinds = {_by_code(refusal.code) for refusal in exc.recipients}
        kind = FailureKind.PERMANENT if kinds == {FailureKind.PERMANENT} else FailureKind.TRANSIENT
        text = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)
        return DeliveryFailure(kind, f"recipient refused: {text}")
    if isinstance(exc, (aiosmtplib.SMTPRecipientRefused, aiosmtplib.SMTPDataError)):
        return DeliveryFailure(_by_code(exc.code), f"{type(exc).__name__}: {exc.code} {exc.message}")
    if isinstance(exc, TimeoutError):
        return DeliveryFailure(FailureKind.TRANSPORT, f"timed out: {exc!r}")
    return DeliveryFailure(FailureKind.TRANSPORT, repr(exc))
