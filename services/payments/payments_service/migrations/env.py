"""Alembic environment: the payments schema with its own version table."""

from keelson.db import run_env
from payments_service.models import SCHEMA, Base

run_env(metadata=Base.metadata, schema=SCHEMA)
