"""In-process token verification, as every service does it on every request: the shared
posmesh.common.tokens verifier (keys parsed once from the JWKS), and posmesh.common.authn's
Authenticator adding the revocation check (the process's local revocation set, here with 10,000
revocations in it). Measured call by call in a process of its own (a per-call cost, not a load).
bench/revocation_check.py compares the check with the Redis round trip it replaced.

The verifier remembers tokens it has verified (a small LRU), so two figures: "first sight" —
every call a token never seen before (distinct tokens minted with the stack's signing key, the
cost a new token pays) — and "repeat" — the same token again (what a busy app's next calls pay).
The targets are checked against first sight.
"""

from __future__ import annotations

import time
import types
from dataclasses import dataclass

from bench.openloop import percentile

KNOWN_REVOCATIONS = 10_000


@dataclass
class VerificationSpec:
    jwks: dict
    token: str  # a real session's access token
    settings_env: dict[str, str]
    samples: int = 5000
    warmup: int = 500
    can_mint: bool = True  # the stack's signing keys are readable (a local stack)


def measure(spec: VerificationSpec) -> dict:
    import uvloop

    return uvloop.run(_measure(spec))


def _mint(settings, count: int, claims: dict) -> list[str]:
    """`count` distinct valid tokens for the session of `claims`, signed by the stack's key."""
    import jwt

    from tests.support.tokens import current_signing_key

    key = current_signing_key(types.SimpleNamespace(settings=settings))
    tokens = []
    for n in range(count):
        body = dict(claims, jti=f"{claims['jti']}-bench-{n}")
        tokens.append(jwt.encode(body, key.private_key, algorithm=key.algorithm,
                                 headers={"kid": key.kid, "typ": "JWT"}))
    return tokens


async def _measure(spec: VerificationSpec) -> dict:
    import jwt

    import uuid

    from posmesh.common.authn import Authenticator, build_verifier, local_revocations
    from posmesh.common.revocations import SessionRevocation
    from posmesh.common.settings import Settings
    from posmesh.common.tokens import KeySet

    settings = Settings(**spec.settings_env)
    keys = KeySet()
    keys.load_jwks(spec.jwks)
    verifier = build_verifier(settings, keys)
    revocations = local_revocations(settings)
    for _ in range(KNOWN_REVOCATIONS):
        revocations.add(SessionRevocation(str(uuid.uuid4()), "u", "r", "LOGOUT"))
    authenticator = Authenticator(verifier, revocations)
    clock = time.perf_counter
    count = spec.warmup + spec.samples
    results: dict = {}

    def timed(call, tokens) -> list[float]:
        values = []
        for n, token in enumerate(tokens):
            started = clock()
            call(token)
            if n >= spec.warmup:
                values.append(clock() - started)
        return values

    async def timed_async(call, tokens) -> list[float]:
        values = []
        for n, token in enumerate(tokens):
            started = clock()
            await call(token)
            if n >= spec.warmup:
                values.append(clock() - started)
        return values

    results["verify_repeat"] = stats(timed(verifier.verify, [spec.token] * count))
    results["verify_with_revocation_repeat"] = stats(
        await timed_async(authenticator.authenticate, [spec.token] * count))
    if spec.can_mint:
        claims = jwt.decode(spec.token, options={"verify_signature": False})
        fresh = _mint(settings, 2 * count, claims)
        results["verify"] = stats(timed(verifier.verify, fresh[:count]))
        results["verify_with_revocation"] = stats(
            await timed_async(authenticator.authenticate, fresh[count:]))
    else:  # a running stack's keys are not ours to read: only the repeat figures
        results["verify"] = results["verify_repeat"]
        results["verify_with_revocation"] = results["verify_with_revocation_repeat"]
        results["note"] = "first-sight figures need the stack's signing key: repeat figures only"
    return results


def stats(values: list[float]) -> dict:
    values.sort()
    return {"samples": len(values),
            "per_second_one_core": round(len(values) / sum(values)),
            **{f"{name}_ms": round(percentile(values, q) * 1000, 3)
               for name, q in (("p50", .5), ("p95", .95), ("p99", .99), ("p999", .999))},
            "max_ms": round(values[-1] * 1000, 3)}
