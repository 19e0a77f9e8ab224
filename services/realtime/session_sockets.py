"""At most WS_MAX_SOCKETS_PER_SESSION live sockets per session and connection type, across every
realtime process: a newer socket replaces the oldest.

Why: the existing app, warned that its token expires, refreshes and opens a new socket (sometimes
two) without closing the old one; with every socket live it received each order event two, three
or four times. Now the older socket is closed at once with a normal closure (1000, reason
`REPLACED`, after a `replaced` message) — a normal closure because that app retries every other
close code — and it gets nothing more. The newer socket is told `auth_success` only after the
older one has ended (or WS_REPLACE_WAIT), so the two never receive the same event, and the newer
one resumes from the position the older one confirmed (resume.py).

Who holds which socket: a Redis list `realtime:session:{sid}:{type}` of `process|connection`
entries, oldest first; a Lua script appends the newcomer and pops what exceeds the cap. An evicted
socket of this process is closed here; one of another live process is closed by that process when
it reads `{"type": "replace", ...}` on its control channel `realtime:control:{process_id}`, and it
answers `{"type": "replaced", "ticket": ...}` on ours once the socket has ended. While Redis is
down only this process's own sockets are counted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import defaultdict
from typing import Awaitable, Callable, Protocol

log = logging.getLogger(__name__)

KEY_PREFIX = "realtime:session:"
CONTROL_PREFIX = "realtime:control:"
ENTRY_TTL_SECONDS = 24 * 3600
REPLACE_WAIT_SECONDS = 1.5
_TIMEOUT_SECONDS = 1.0

# KEYS[1] the session's list. ARGV: the newcomer's entry, the cap, ttl. Returns evicted entries.
_CLAIM = """
redis.call('LREM', KEYS[1], 0, ARGV[1])
redis.call('RPUSH', KEYS[1], ARGV[1])
local evicted = {}
while redis.call('LLEN', KEYS[1]) > tonumber(ARGV[2]) do
  table.insert(evicted, redis.call('LPOP', KEYS[1]))
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return evicted
"""


class SessionSocket(Protocol):
    connection_id: str
    session_id: str
    ended: asyncio.Event

    @property
    def connection_type(self) -> str: ...

    def replace(self) -> None: ...  # closes it with 1000 REPLACED; idempotent


def control_channel(process_id: str) -> str:
    return CONTROL_PREFIX + process_id


def session_key(session_id: str, connection_type: str) -> str:
    return f"{KEY_PREFIX}{session_id}:{connection_type}"


class SessionSockets:
    def __init__(self, redis, process_id: str, *, cap: int,
                 live_processes: Callable[[], Awaitable[list[str]]],
                 on_replaced: Callable[[], None] = lambda: None,
                 replace_wait: float = REPLACE_WAIT_SECONDS) -> None:
        self._redis = redis
        self._claim = redis.register_script(_CLAIM) if redis is not None else None
        self.process_id = process_id
        self.cap = cap
        self._live_processes = live_processes
        self._on_replaced = on_replaced
        self._replace_wait = replace_wait
        # connection id → (socket of this process, the session key it claimed)
        self._sockets: dict[str, tuple[SessionSocket, tuple[str, str]]] = {}
        self._by_session: defaultdict[tuple[str, str], list[SessionSocket]] = defaultdict(list)
        self._tickets: dict[str, asyncio.Future] = {}
        self._background: set[asyncio.Task] = set()

    @property
    def channel(self) -> str:
        return control_channel(self.process_id)

    # --- claiming --------------------------------------------------------------------------

    async def claim(self, sock: SessionSocket) -> None:
        """Make room for `sock`: the sockets of its session beyond the cap are closed, and this
        returns once they have ended (or after the replace wait)."""
        key = (sock.session_id, sock.connection_type)
        self._sockets[sock.connection_id] = (sock, key)
        local = self._by_session[key]
        local.append(sock)
        waits: list[Awaitable[object]] = []
        evicted = await self._claim_in_redis(sock, key)
        if evicted is None:  # Redis unavailable: this process's own sockets only
            overflow = len(local) - self.cap
            evicted = [f"{self.process_id}|{old.connection_id}" for old in local[:max(0, overflow)]]
        remote: list[tuple[str, str]] = []
        for entry in evicted:
            process_id, _, connection_id = entry.partition("|")
            if process_id == self.process_id:
                old, _ = self._sockets.get(connection_id, (None, None))
                if old is not None and old is not sock:
                    waits.append(self._replace_here(old))
            else:
                remote.append((process_id, connection_id))
        if remote:
            live = set(await self._live_or_empty())
            waits.extend(self._replace_there(process_id, connection_id)
                         for process_id, connection_id in remote if process_id in live)
        if waits:
            done, pending = await asyncio.wait(
                [asyncio.ensure_future(wait) for wait in waits], timeout=self._replace_wait)
            for task in pending:
                task.cancel()
            if pending:
                log.info("%d replaced socket(s) did not end within %.1fs", len(pending),
                         self._replace_wait)

    async def _claim_in_redis(self, sock: SessionSocket, key: tuple[str, str]) -> list[str] | None:
        if self._claim is None:
            return None
        try:
            result = await asyncio.wait_for(self._claim(
                keys=[session_key(*key)],
                args=[f"{self.process_id}|{sock.connection_id}", self.cap, ENTRY_TTL_SECONDS]),
                _TIMEOUT_SECONDS)
        except Exception as exc:
            log.warning("session sockets unavailable in Redis; counting this process's only",
                        extra={"error": repr(exc)})
            return None
        return [item.decode() if isinstance(item, bytes) else item for item in result]

    async def _live_or_empty(self) -> list[str]:
        try:
            return await asyncio.wait_for(self._live_processes(), _TIMEOUT_SECONDS)
        except Exception:
            return []

    async def _replace_here(self, old: SessionSocket) -> None:
        self._on_replaced()
        old.replace()
        await old.ended.wait()

    async def _replace_there(self, process_id: str, connection_id: str) -> None:
        ticket = uuid.uuid4().hex
        answered = asyncio.get_running_loop().create_future()
        self._tickets[ticket] = answered
        try:
            await self._redis.publish(control_channel(process_id), json.dumps({
                "type": "replace", "connection_id": connection_id, "ticket": ticket,
                "reply_to": self.process_id}))
            self._on_replaced()
            await answered
        finally:
            self._tickets.pop(ticket, None)

    # --- releasing -------------------------------------------------------------------------

    async def release(self, sock: SessionSocket) -> None:
        claimed = self._sockets.get(sock.connection_id)
        if claimed is None or claimed[0] is not sock:
            return
        del self._sockets[sock.connection_id]
        key = claimed[1]
        local = self._by_session.get(key)
        if local is not None:
            if sock in local:
                local.remove(sock)
            if not local:
                del self._by_session[key]
        if self._redis is None:
            return
        try:
            await asyncio.wait_for(self._redis.lrem(
                session_key(*key), 0, f"{self.process_id}|{sock.connection_id}"),
                _TIMEOUT_SECONDS)
        except Exception as exc:  # the entry expires, or the next claim pops it
            log.info("could not remove a socket from its session list: %r", exc)

    # --- the control channel ---------------------------------------------------------------

    def on_control(self, payload: bytes | str) -> None:
        try:
            message = json.loads(payload)
        except (TypeError, ValueError):
            log.warning("ignoring a malformed control message")
            return
        if not isinstance(message, dict):
            return
        if message.get("type") == "replaced":
            answered = self._tickets.get(str(message.get("ticket")))
            if answered is not None and not answered.done():
                answered.set_result(None)
        elif message.get("type") == "replace":
            task = asyncio.get_running_loop().create_task(self._answer_replace(message))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _answer_replace(self, message: dict) -> None:
        old, _ = self._sockets.get(str(message.get("connection_id")), (None, None))
        if old is not None:
            old.replace()
            try:
                await asyncio.wait_for(old.ended.wait(), self._replace_wait)
            except TimeoutError:
                pass
        reply_to = message.get("reply_to")
        if not isinstance(reply_to, str) or not reply_to:
            return
        try:
            await self._redis.publish(control_channel(reply_to), json.dumps(
                {"type": "replaced", "ticket": message.get("ticket")}))
        except Exception as exc:
            log.info("could not confirm a replacement: %r", exc)

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
