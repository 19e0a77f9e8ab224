"""Alembic environment of the auth service (schema `auth`); see posmesh.common.migrations."""

from alembic import context

from posmesh.common.migrations import run_alembic_env

run_alembic_env(context)
