"""`python -m payments_service`: run the payments service."""

from keelson.service import run_service
from payments_service.settings import Settings

run_service("payments_service", Settings)
