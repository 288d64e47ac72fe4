"""Alembic environment: the auth schema with its own version table."""

from auth_service.models import SCHEMA, Base
from keelson.db import run_env

run_env(metadata=Base.metadata, schema=SCHEMA)
