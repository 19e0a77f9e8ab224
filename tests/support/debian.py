"""Debian packages a test needs (Chromium, Prometheus), installed when missing: sessions and CI
run as root on Debian, and `make test` must work on a fresh machine with only Python."""

from __future__ import annotations

import os
import shutil
import subprocess


def ensure_debian_package(package: str, *executables: str) -> list[str]:
    """The paths of `executables`, installing `package` with apt-get first when any is missing;
    RuntimeError saying what to install when that is not possible here."""
    found = [shutil.which(name) for name in executables]
    if all(found):
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError(f"{', '.join(executables)} missing and not installable here: "
                           f"`apt-get install {package}` (Debian) as root")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "--no-install-recommends", package]
    # The package lists may be stale on a fresh machine: update once and try again.
    for argv in (install, ["apt-get", "update"], install):
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode == 0 and argv is install and argv[1] == "install":
            if all(shutil.which(name) for name in executables):
                break
    found = [shutil.which(name) for name in executables]
    if not all(found):
        raise RuntimeError(f"installing Debian's {package} failed:\n{result.stdout[-2000:]}"
                           f"{result.stderr[-2000:]}")
    return found
