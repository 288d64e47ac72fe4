"""`python -m auth_service`: run the auth service."""

from auth_service.settings import Settings
from keelson.service import run_service

run_service("auth_service", Settings)
