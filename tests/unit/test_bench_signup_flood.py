"""The registration-flood phase's arithmetic (bench/signup_flood.py)."""

from __future__ import annotations

from bench.signup_flood import login_p95_moved, registrations_outcome


def _round(p95: float, requests: int = 250, errors: int = 0, kinds: dict | None = None,
           seconds: float = 10.0) -> dict:
    return {"p95_ms": p95, "requests": requests, "errors": errors,
            "error_kinds": kinds or {}, "duration_s": seconds}


def test_the_ratio_compares_medians_so_one_disturbed_round_does_not_decide_it():
    quiet = [_round(25.0), _round(900.0), _round(27.0)]
    flooded = [_round(30.0), _round(29.0), _round(700.0)]

    moved = login_p95_moved(quiet, flooded)

    assert moved == {"quiet_p95_ms": 27.0, "flooded_p95_ms": 30.0, "ratio": 1.111}


def test_shed_registrations_are_told_apart_from_failed_ones():
    rounds = [_round(0, requests=200, errors=160, kinds={"503 SERVER_BUSY": 150, "500 ": 10}),
              _round(0, requests=200, errors=165, kinds={"503 SERVER_BUSY": 160,
                                                         "429 RATE_LIMITED": 5})]

    outcome = registrations_outcome(rounds)

    assert outcome["accepted"] == 75 and outcome["accepted_per_second"] == 3.8
    assert outcome["shed"] == {"503 SERVER_BUSY": 310, "429 RATE_LIMITED": 5}
    assert outcome["failed"] == {"500 ": 10}
