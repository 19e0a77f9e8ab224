"""The supervisor starts a crashed service process again, and gives up on one that keeps
crashing (stack/supervisor.py). Real child processes, no stack."""

from __future__ import annotations

import asyncio
import sys

from posmesh.common.settings import Settings
from stack import supervisor
from stack.supervisor import Child, Stack


def _stack(tmp_path) -> Stack:
    stack = Stack(Settings(POSMESH_DATA_DIR=str(tmp_path)))
    stack._failed = asyncio.get_running_loop().create_future()
    stack.started_in = 0.0  # as after start(): crashes from now on are restarted
    return stack


def _child(tmp_path, code: str) -> Child:
    return Child("orders-2", [sys.executable, "-c", code], {}, tmp_path / "orders-2.log",
                 restartable=True)


async def test_a_crashed_service_process_is_started_again_and_recorded(tmp_path):
    stack = _stack(tmp_path)
    marker = tmp_path / "started"
    # Crashes on its first start only (the marker file says it ran before).
    code = (f"import pathlib, sys, time\np = pathlib.Path({str(marker)!r})\n"
            "if not p.exists():\n    p.write_text('x'); sys.exit(3)\ntime.sleep(30)")
    child = _child(tmp_path, code)
    try:
        await stack._spawn(child)
        async with asyncio.timeout(10):
            while not (stack.crashes and child.running):
                await asyncio.sleep(0.05)
        assert [(c.child.name, c.returncode) for c in stack.crashes] == [("orders-2", 3)]
        assert stack.failure is None
    finally:
        await stack._terminate(child)


async def test_a_service_that_keeps_crashing_fails_the_stack(tmp_path, monkeypatch):
    monkeypatch.setattr(supervisor, "RESTART_FIRST_DELAY_SECONDS", 0.01)
    stack = _stack(tmp_path)
    child = _child(tmp_path, "import sys; print('bad setting'); sys.exit(2)")
    await stack._spawn(child)
    died = await asyncio.wait_for(stack.wait_failed(), 20)

    assert (died.child.name, died.returncode) == ("orders-2", 2)
    assert "bad setting" in str(died)
    assert len(stack.crashes) == supervisor.CRASH_LOOP_LIMIT - 1  # restarted four times, then not
