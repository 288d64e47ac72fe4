"""`python -m gateway`: run the gateway service (on granian, see `gateway.serve`)."""

from gateway.serve import serve
from gateway.settings import Settings
from keelson.service import run_service

# The gateway reads X-Forwarded-For itself, trusting only `trusted_proxy_hops` of it.
run_service("gateway", Settings, proxy_headers=False, serve=serve)
