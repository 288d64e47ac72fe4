"""Alembic environment: the logs schema with its own version table."""

from keelson.db import run_env
from logs_service.models import SCHEMA, Base

run_env(metadata=Base.metadata, schema=SCHEMA)
