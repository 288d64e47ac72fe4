"""`python -m notifications_service`: run the notifications service."""

from keelson.service import run_service
from notifications_service.settings import Settings

run_service("notifications_service", Settings)
