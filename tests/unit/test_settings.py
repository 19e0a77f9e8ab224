"""The settings module: parsing from the environment, the hand-over to child processes, and
that every setting is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from posmesh.common.settings import Settings
from stack.supervisor import settings_env

ROOT = Path(__file__).resolve().parents[2]


def _aliases() -> list[str]:
    return [info.alias or name.upper() for name, info in Settings.model_fields.items()]


def test_lists_are_read_as_comma_separated_values(monkeypatch):
    monkeypatch.setenv("CORS_ALLOWED_ORIGINS", " https://app.example.com , capacitor://localhost,")
    monkeypatch.setenv("REALTIME_WS_ADDRS", "127.0.0.1:8081,127.0.0.1:8082")

    settings = Settings()

    assert settings.cors_allowed_origins == ["https://app.example.com", "capacitor://localhost"]
    assert settings.realtime_ws_addrs == ["127.0.0.1:8081", "127.0.0.1:8082"]


def test_a_wildcard_cors_origin_is_refused(monkeypatch):
    monkeypatch.setenv("CORS_ALLOWED_ORIGINS", "https://*.example.com")

    with pytest.raises(ValidationError):
        Settings()


def test_pool_defaults_are_the_documented_ones():
    settings = Settings(DATABASE_URL=None)

    assert (settings.db_pool_size, settings.db_max_overflow) == (20, 40)
    assert settings.db_pool_pre_ping is True
    assert settings.db_pool_recycle == 3600


def test_child_processes_see_exactly_the_parent_settings(monkeypatch, tmp_path):
    parent = Settings(POSMESH_DATA_DIR=str(tmp_path), EDGE_PORT=12345, DB_POOL_PRE_PING=False,
                      CORS_ALLOWED_ORIGINS="https://a.example,https://b.example",
                      REALTIME_WS_ADDRS="127.0.0.1:1,127.0.0.1:2", DATABASE_URL=None)
    for key in _aliases():
        monkeypatch.delenv(key, raising=False)
    for key, value in settings_env(parent).items():
        if value is not None:
            monkeypatch.setenv(key, value)

    assert Settings() == parent


def test_every_setting_is_documented():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    docs = "".join(page.read_text() for page in pages if page.exists())

    missing = [alias for alias in _aliases() if f"`{alias}`" not in docs]
    assert not missing, f"settings documented nowhere in README.md or docs/: {missing}"


@pytest.mark.parametrize("page", ["README.md", "docs/platform.md"])
def test_every_setting_has_a_row_in_the_settings_tables(page):
    rows = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", (ROOT / page).read_text(), flags=re.M))

    assert [alias for alias in _aliases() if alias not in rows] == []
    assert rows <= set(_aliases()), f"{page} lists settings that do not exist"


def test_mail_settings_default_to_the_dev_setup():
    settings = Settings(SMTP_URL=None, PUBLIC_BASE_URL=None, EDGE_PORT=8443)

    assert settings.smtp_url is None  # `posmesh run` starts the dev mail server
    assert settings.public_url == "https://localhost:8443"
    assert Settings(PUBLIC_BASE_URL="https://pos.example.com/").public_url == "https://pos.example.com"


def test_replicas_default_to_one_per_core_and_callers_get_every_replica():
    from posmesh.common import clients
    from posmesh.common.settings import cpu_count

    settings = Settings(ORDERS_ADDR="127.0.0.1:50053", ORDERS_ADDRS="127.0.0.1:50053,127.0.0.1:6000",
                        STAFF_ADDR="127.0.0.1:50052", STAFF_ADDRS="")

    assert settings.auth_replicas == settings.orders_replicas == cpu_count() >= 1
    assert clients.address("orders", settings) == "ipv4:127.0.0.1:50053,127.0.0.1:6000"
    assert clients.address("staff", settings) == "127.0.0.1:50052"
    assert clients.target(["[::1]:1", "[::1]:2"]) == "ipv6:[::1]:1,[::1]:2"
    with pytest.raises(ValueError, match="IP literals"):
        clients.target(["orders:50053", "orders-2:50053"])


def test_the_supervisor_gives_each_replica_a_port_of_its_own_or_refuses_a_short_list():
    from stack.supervisor import replica_addrs

    settings = Settings(AUTH_REPLICAS=1, STAFF_REPLICAS=2, ORDERS_REPLICAS=3,
                        ORDERS_ADDR="127.0.0.1:50053", ORDERS_ADDRS="")
    addrs = replica_addrs(settings)

    assert addrs["auth_addrs"] == [settings.auth_addr]
    assert addrs["orders_addrs"][0] == "127.0.0.1:50053" and len(set(addrs["orders_addrs"])) == 3
    with pytest.raises(ValueError, match="ORDERS_ADDRS lists 1 addresses for ORDERS_REPLICAS=3"):
        replica_addrs(settings.model_copy(update={"orders_addrs": ["127.0.0.1:1"]}))
def test_secrets_come_from_files_in_the_secrets_dir_unless_the_environment_sets_them(
        tmp_path, monkeypatch):
    from posmesh.common.settings import get_settings

    (tmp_path / "DATABASE_URL").write_text("postgresql://auth:from-file@db/posmesh")
    (tmp_path / "REDIS_URL").write_text("redis://auth:from-file@redis:6379/0")
    monkeypatch.setenv("POSMESH_SECRETS_DIR", str(tmp_path))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("REDIS_URL", "redis://from-env:6379/0")
    get_settings.cache_clear()
    try:
        settings = get_settings()
    finally:
        get_settings.cache_clear()

    assert settings.database_url == "postgresql://auth:from-file@db/posmesh"
    assert settings.redis_url == "redis://from-env:6379/0"
