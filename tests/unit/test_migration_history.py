"""Each service's migrations are one line of history: branches merged from parallel work must not
leave two heads (`alembic upgrade head` would refuse to start the service)."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

SERVICES = Path(__file__).resolve().parents[2] / "services"


@pytest.mark.parametrize("service", ["auth", "staff", "orders"])
def test_a_services_migrations_have_exactly_one_head(service):
    script = ScriptDirectory(str(SERVICES / service / "migrations"))
    heads = script.get_heads()
    assert len(heads) == 1, f"{service} has several migration heads: {heads}"
    assert len(list(script.walk_revisions())) == len(list(
        (SERVICES / service / "migrations" / "versions").glob("[0-9]*.py")))
