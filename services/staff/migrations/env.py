"""Alembic environment of the staff schema (run through posmesh.common.migrations)."""

from alembic import context

from posmesh.common.migrations import run_alembic_env

run_alembic_env(context)
