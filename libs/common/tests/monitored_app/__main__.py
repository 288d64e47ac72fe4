"""`python -m monitored_app`: run it as `python -m <service>` runs a service."""

from keelson.config import KeelsonSettings
from keelson.service import run_service

run_service("monitored_app", KeelsonSettings)
