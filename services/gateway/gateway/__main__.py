"""`python -m gateway`: run the gateway service."""

from gateway.settings import Settings
from keelson.service import run_service

# The gateway reads X-Forwarded-For itself, trusting only `trusted_proxy_hops` of it:
# uvicorn's own reading would believe any caller on 127.0.0.1.
run_service("gateway", Settings, proxy_headers=False)
