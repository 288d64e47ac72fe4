"""Alembic environment: the notifications schema with its own version table."""

from keelson.db import run_env
from notifications_service.models import SCHEMA, Base

run_env(metadata=Base.metadata, schema=SCHEMA)
