"""The development mail server (`posmesh mail-server`): a real SMTP server (aiosmtpd) that accepts
every message and keeps it in a Maildir, for `posmesh run`, the test stack and docker-compose.

It relays nothing: mail sent to it stays on this machine, readable with `posmesh mail`
(stack/mail_store.py). No authentication and no TLS, so it listens on loopback unless told
otherwise (a compose network).
"""

from __future__ import annotations

import asyncio
import logging
import mailbox
import signal
from email.message import Message
from pathlib import Path

from aiosmtpd.handlers import AsyncMessage
from aiosmtpd.smtp import SMTP

log = logging.getLogger("posmesh.mail-server")

# The name the server greets with; set, because aiosmtpd would otherwise look up this host's
# FQDN (a blocking DNS call) on every connection.
SERVER_NAME = "posmesh-dev-mail"
MAX_MESSAGE_BYTES = 10 * 1024 * 1024


class MaildirHandler(AsyncMessage):
    """Stores each message (with aiosmtpd's X-Peer, X-MailFrom and X-RcptTo envelope headers)."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.maildir = mailbox.Maildir(folder, create=True)
        self._lock = asyncio.Lock()  # one writer at a time: Maildir's unique names use a counter

    async def handle_message(self, message: Message) -> None:
        async with self._lock:
            await asyncio.to_thread(self.maildir.add, message)
        log.info("stored mail to %s: %s", message.get("X-RcptTo", ""), message.get("Subject", ""))


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--listen must be HOST:PORT, not {listen!r}")
    return host, int(port)


async def serve(listen: str, folder: Path) -> None:
    host, port = parse_listen(listen)
    handler = MaildirHandler(folder)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname=SERVER_NAME, enable_SMTPUTF8=True,
                     data_size_limit=MAX_MESSAGE_BYTES),
        host, port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("dev mail server listening on smtp://%s:%d, storing mail in %s", host, port, folder)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()
        log.info("dev mail server stopped")


def main(listen: str, folder: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every SMTP command
    asyncio.run(serve(listen, folder))
