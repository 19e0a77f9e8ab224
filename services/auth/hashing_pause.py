"""While any auth process of this machine signs someone in, every auth process's new-password
hasher is stopped (services/auth/enrollment_hashing.py explains why a sign-in must not share the
machine with a new-password hash).

With several auth replicas on one machine they share its cores: a sign-in in one replica must
also stop the other replicas' hashing children. They agree through a small state file in the
data dir, changed under an exclusive `flock`: which processes are signing in and the pid of every
hashing child. The first process to begin signing in stops every child; the last one to finish
continues them; a child that starts while someone signs in is stopped at once. A process touches
the file only when its own sign-ins go from none to some and back (measured: about 25 µs each
time, docs/auth.md). Processes on other machines share no cores, and no file.

Every pid is kept with its start time, so a process that died (or a pid the system gave to
another process since) is never waited for and never signalled.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
from pathlib import Path
from typing import Iterator

import psutil

log = logging.getLogger(__name__)


def _started(pid: int) -> float | None:
    """When `pid` started (any unit, compared only), or None when there is no such process."""
    try:  # Linux: the start time in clock ticks, one read (psutil costs ten times as much)
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return float(stat.read().rsplit(b")", 1)[1].split()[19])
    except FileNotFoundError:
        return None
    except OSError:
        pass
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _alive(pid: str, started: float) -> bool:
    return _started(int(pid)) == started


class MachineHashingPause:
    """`pause()` / `resume()` from this process's sign-in hasher (passwords.PasswordHashing's
    `pauses`); `add_child(pid)` / `remove_child(pid)` from its new-password hasher."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._pid = str(os.getpid())
        self._started = _started(os.getpid())

    def pause(self) -> None:
        """This process began signing in."""
        with self._state() as state:
            # One that died signing in is no reason to think the children are stopped already.
            state["signing"] = {pid: started for pid, started in state["signing"].items()
                                if _alive(pid, started)}
            if not state["signing"]:
                self._signal_children(state, signal.SIGSTOP)
            state["signing"][self._pid] = self._started

    def resume(self) -> None:
        """This process has no sign-in running any more."""
        with self._state() as state:
            state["signing"].pop(self._pid, None)
            state["signing"] = {pid: started for pid, started in state["signing"].items()
                                if _alive(pid, started)}
            if not state["signing"]:
                self._signal_children(state, signal.SIGCONT)

    def add_child(self, pid: int) -> None:
        """A hashing child started: stopped at once when some process is signing in."""
        with self._state() as state:
            state["children"] = {child: started for child, started in state["children"].items()
                                 if _alive(child, started)}
            state["children"][str(pid)] = _started(pid)
            if state["signing"]:
                self._kill(pid, signal.SIGSTOP)

    def remove_child(self, pid: int) -> None:
        with self._state() as state:
            state["children"].pop(str(pid), None)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.resume()
        os.close(self._fd)

    @contextlib.contextmanager
    def _state(self) -> Iterator[dict]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(self._fd).st_size
            raw = os.pread(self._fd, size, 0)
            try:
                state = json.loads(raw) if raw.strip() else {}
            except ValueError:
                state = {}
            state.setdefault("signing", {})
            state.setdefault("children", {})
            yield state
            # Padded to the old length (JSON allows trailing spaces): one write, no truncation
            # that a crash could leave half done.
            data = json.dumps(state, separators=(",", ":")).encode()
            os.pwrite(self._fd, data.ljust(size), 0)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _signal_children(self, state: dict, signum: int) -> None:
        for pid, started in list(state["children"].items()):
            if _alive(pid, started):
                self._kill(int(pid), signum)
            else:
                del state["children"][pid]

    @staticmethod
    def _kill(pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
