"""`posmesh mail-server` stores what it receives over SMTP; `posmesh mail` lists and prints it.
(A server of its own in a temporary data dir, driven by a real SMTP client.)"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path
from typing import AsyncIterator

import aiosmtplib
import pytest

from stack.embedded import free_port, port_open


def posmesh(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "POSMESH_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "stack.cli", *args], env=env, capture_output=True,
                          text=True, timeout=60, check=check)


@pytest.fixture
async def mail_server(tmp_path) -> AsyncIterator[int]:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "stack.cli", "mail-server", "--listen", f"127.0.0.1:{port}",
        env={**os.environ, "POSMESH_DATA_DIR": str(tmp_path)},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not port_open("127.0.0.1", port):
        assert process.returncode is None and time.monotonic() < deadline, "mail-server did not start"
        await asyncio.sleep(0.05)
    yield port
    process.terminate()
    assert await asyncio.wait_for(process.wait(), 10) == 0


async def send(port: int, to: str, subject: str, text: str) -> None:
    message = EmailMessage()
    message["From"] = "posmesh <no-reply@posmesh.local>"
    message["To"] = to
    message["Subject"] = subject
    message.set_content(text)
    await aiosmtplib.send(message, hostname="127.0.0.1", port=port, timeout=10)


async def test_posmesh_mail_lists_the_stored_mail_newest_first(tmp_path, mail_server):
    await send(mail_server, "ann@example.com", "First mail", "one\n")
    await asyncio.sleep(0.01)
    await send(mail_server, "bob@example.com", "Second mail", "two\n")

    lines = posmesh(tmp_path, "mail").stdout.splitlines()

    assert len(lines) == 2
    assert lines[0].split()[0] == "1" and "bob@example.com" in lines[0] and "Second mail" in lines[0]
    assert lines[1].split()[0] == "2" and "ann@example.com" in lines[1] and "First mail" in lines[1]
    assert [line for line in posmesh(tmp_path, "mail", "--to", "ann@example.com").stdout.splitlines()
            if "First mail" in line]


async def test_posmesh_mail_show_prints_the_numbered_mail_with_its_text(tmp_path, mail_server):
    await send(mail_server, "ann@example.com", "Your link",
               "Open https://localhost:8443/verify-email?token=abc\n")
    await asyncio.sleep(0.01)
    await send(mail_server, "bob@example.com", "Something else", "not this\n")

    shown = posmesh(tmp_path, "mail", "show", "2").stdout

    assert "Subject: Your link" in shown
    assert "To: ann@example.com" in shown
    assert "https://localhost:8443/verify-email?token=abc" in shown
    assert "not this" not in shown


async def test_posmesh_mail_last_prints_the_newest_mail_to_an_address(tmp_path, mail_server):
    await send(mail_server, "ann@example.com", "Older for Ann", "old\n")
    await asyncio.sleep(0.01)
    await send(mail_server, "ann@example.com", "Newer for Ann", "new\n")
    await asyncio.sleep(0.01)
    await send(mail_server, "bob@example.com", "For Bob", "bob\n")

    shown = posmesh(tmp_path, "mail", "last", "--to", "ann@example.com").stdout

    assert "Subject: Newer for Ann" in shown and "new" in shown
    assert "Older for Ann" not in shown and "For Bob" not in shown


def test_posmesh_mail_says_where_it_looked_when_nothing_was_stored(tmp_path):
    result = posmesh(tmp_path, "mail", check=False)

    assert result.returncode == 1
    assert str(tmp_path / "mail") in result.stderr
