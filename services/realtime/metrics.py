"""Counters of the WebSocket side of one realtime process: plain integers on the hot path,
exported at scrape time (RealtimeGateway.metric_families, posmesh/common/metrics.py)."""

from __future__ import annotations

from collections import Counter


class GatewayMetrics:
    def __init__(self) -> None:
        self.connections_opened = 0
        self.slow_consumers = 0
        self.invalid_messages = 0
        self.revocation_closes = 0
        self.refused_origins = 0
        self.replaced = 0  # sockets closed because a newer one of their session took over
        self.resumed = 0  # sockets started from their session's stored position
        self.user_events = 0  # user events written to user-scoped sockets
        self.auth_failures: Counter[str] = Counter()
        self.closes: Counter[int] = Counter()

    def count_close(self, code: int) -> None:
        self.closes[code] += 1
