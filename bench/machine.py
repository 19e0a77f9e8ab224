"""What the bench ran on and how to run it again."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from pathlib import Path

import psutil


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict:
    memory = psutil.virtual_memory()
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gib": round(memory.total / (1 << 30), 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def command_line() -> str:
    """The command that reproduces this run, as typed at the repository root."""
    args = sys.argv[1:]
    direct = " ".join([".venv/bin/python -m bench", *(shlex.quote(a) for a in args)])
    return "make bench" + (f" ARGS={shlex.quote(' '.join(args))}" if args else "") + f" (= {direct})"


def summary_line(machine: dict) -> str:
    return (f"{machine['cores']} cores ({machine['cpu_model']}), {machine['memory_gib']} GiB, "
            f"{machine['os']}, Python {machine['python']}, load average at start "
            f"{' '.join(str(x) for x in machine['load_average_at_start'])}")
