"""Defects the bad-input suite found in code outside it, reported to their owners.

Each has a strict-xfail test in test_known_bugs.py that states the correct behaviour: when the
defect is fixed that test passes, strict xfail turns the pass into a failure, and the entry here
and its xfail marker are deleted together. Until then the fuzz tests recognise the defect's
exact signature (and nothing broader) so they keep guarding everything else.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KnownBug:
    name: str
    summary: str
    response_marker: str = ""  # text in a 5xx body that identifies it
    log_markers: tuple[str, ...] = ()  # text in a service log line that identifies it

    def matches_response(self, status: int, body: str) -> bool:
        return bool(self.response_marker) and status >= 500 and self.response_marker in body

    def matches_log(self, line: str) -> bool:
        return any(marker in line for marker in self.log_markers)


INVALID_UTF8_PATH = KnownBug(
    "invalid_utf8_path",
    "A path parameter that percent-decodes to invalid UTF-8 (e.g. %C0%AF) reaches the service as "
    "a proto string field; grpc fails to deserialize it before any interceptor runs: HTTP 500 "
    "'Unexpected DecodeError', logged at error level (every route with a string path parameter).",
    response_marker="DecodeError",
    log_markers=("Unexpected [DecodeError] raised by servicer method",),
)
OVERSIZED_RESTAURANT_HEADER = KnownBug(
    "oversized_restaurant_header",
    "An X-Restaurant-Id header over ~16 KiB is echoed three times into the TENANT_MISMATCH error "
    "(grpc-message, ErrorInfo message and metadata): the trailers exceed Envoy's upstream header "
    "limit and the client gets 503 SERVICE_UNAVAILABLE instead of 403; the security event is not "
    "stored either (details_json over 16384 bytes).",
    log_markers=("details_json must be at most 16384 bytes",),
)
SECURITY_EVENT_NUL = KnownBug(
    "security_event_nul",
    "A restaurant id containing NUL (e.g. in a request body) makes the TENANT_MISMATCH security "
    "event fail to store: auth's RecordSecurityEvent answers INTERNAL ('\\u0000 cannot be "
    "converted to text'), so an attacker can keep their probing out of the audit table.",
    log_markers=("unhandled error in /posmesh.auth.v1.AuthAdminService/RecordSecurityEvent",
                 "could not store security event"),
)

KNOWN_BUGS = (INVALID_UTF8_PATH, OVERSIZED_RESTAURANT_HEADER, SECURITY_EVENT_NUL)


def known_response(status: int, body: str, headers: dict[str, str]) -> KnownBug | None:
    if INVALID_UTF8_PATH.matches_response(status, body):
        return INVALID_UTF8_PATH
    if status == 503 and len(headers.get("x-restaurant-id", "")) > 10_000:
        return OVERSIZED_RESTAURANT_HEADER
    return None


def known_log_line(line: str) -> KnownBug | None:
    for bug in KNOWN_BUGS:
        if bug.matches_log(line):
            return bug
    return None
