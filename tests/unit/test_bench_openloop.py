"""What the open-loop recorder makes of outcomes under overload (bench/openloop.py)."""

from __future__ import annotations

import pytest

from bench.openloop import Recorder, summarise, without_reason


def test_successes_refusals_and_slow_requests_are_told_apart():
    recorder = Recorder()
    for latency in (0.010, 0.020, 0.030):
        recorder.record(latency, None)
    for latency in (0.002, 0.004):
        recorder.record(latency, "503 OVERLOADED")
    recorder.record(2.5, "timeout")
    recorder.record(0.1, "503")

    summary = summarise(recorder, duration=1.0)

    assert summary["achieved_rps"] == 3.0  # goodput: successes per second
    assert summary["ok_p99_ms"] == 30.0
    assert (summary["refused"], summary["refused_max_ms"]) == (2, 4.0)
    assert (summary["over_2s"], summary["timeouts"], summary["without_reason"]) == (1, 1, 2)


@pytest.mark.parametrize("kind, reasonless", [
    ("503 OVERLOADED", False), ("504 DEADLINE_EXCEEDED", False), ("503", True),
    ("timeout", True), ("RemoteProtocolError", True), ("502 non-JSON body", True),
])
def test_an_error_without_a_reason_a_client_can_act_on_is_recognised(kind, reasonless):
    assert without_reason(kind) is reasonless
