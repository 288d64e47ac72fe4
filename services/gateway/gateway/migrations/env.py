"""Alembic environment: the gateway schema with its own version table."""

from gateway.models import SCHEMA, Base
from keelson.db import run_env

run_env(metadata=Base.metadata, schema=SCHEMA)
