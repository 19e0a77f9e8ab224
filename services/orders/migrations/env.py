"""Alembic environment of the orders service (schema `orders`); see posmesh.common.migrations."""

from alembic import context

from posmesh.common.migrations import run_alembic_env

run_alembic_env(context)
