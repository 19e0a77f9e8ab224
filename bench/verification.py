"""In-process token verification, as every service does it on every request: the shared
posmesh.common.tokens verifier (keys parsed once from the JWKS), and posmesh.common.authn's
Authenticator adding the revocation check against the stack's Redis. Measured call by call in a
process of its own (this is a per-call cost, not a load)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench.openloop import percentile


@dataclass
class VerificationSpec:
    jwks: dict
    token: str
    settings_env: dict[str, str]
    samples: int = 5000
    warmup: int = 500


def measure(spec: VerificationSpec) -> dict:
    import uvloop

    return uvloop.run(_measure(spec))


async def _measure(spec: VerificationSpec) -> dict:
    from posmesh.common.authn import Authenticator, build_verifier
    from posmesh.common.redis import create_redis
    from posmesh.common.settings import Settings
    from posmesh.common.tokens import KeySet, RevocationChecker

    settings = Settings(**{k: v for k, v in spec.settings_env.items()})
    keys = KeySet()
    keys.load_jwks(spec.jwks)
    verifier = build_verifier(settings, keys)
    redis = create_redis(settings)
    authenticator = Authenticator(verifier, RevocationChecker(redis))
    clock = time.perf_counter

    plain: list[float] = []
    for n in range(spec.warmup + spec.samples):
        started = clock()
        verifier.verify(spec.token)
        if n >= spec.warmup:
            plain.append(clock() - started)

    revocation: list[float] = []
    for n in range(spec.warmup + spec.samples):
        started = clock()
        await authenticator.authenticate(spec.token)
        if n >= spec.warmup:
            revocation.append(clock() - started)
    await redis.aclose()

    def stats(values: list[float]) -> dict:
        values.sort()
        return {"samples": len(values),
                "per_second_one_core": round(len(values) / sum(values)),
                **{f"{name}_ms": round(percentile(values, q) * 1000, 3)
                   for name, q in (("p50", .5), ("p95", .95), ("p99", .99), ("p999", .999))},
                "max_ms": round(values[-1] * 1000, 3)}

    return {"verify": stats(plain), "verify_with_revocation": stats(revocation)}
