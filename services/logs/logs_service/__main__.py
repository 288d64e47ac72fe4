"""`python -m logs_service`: run the logs service."""

from keelson.service import run_service
from logs_service.settings import Settings

run_service("logs_service", Settings)
