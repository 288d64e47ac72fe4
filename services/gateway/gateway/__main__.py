"""`python -m gateway`: run the gateway service."""

from gateway.settings import Settings
from keelson.service import run_service

run_service("gateway", Settings)
