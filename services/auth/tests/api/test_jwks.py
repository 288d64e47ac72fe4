"""The JWKS at /.well-known/jwks.json and under the service prefix."""

import httpx
from fastapi import FastAPI
from jose import jwk

from auth_service.plugin import KEYRING


async def test_jwks_lists_the_public_keys_at_both_paths(
    client: httpx.AsyncClient, auth_app: FastAPI
) -> None:
    keyring = auth_app.state.container.resolve(KEYRING)
    for path in ("/.well-known/jwks.json", "/api/v1/auth/.well-known/jwks.json"):
        response = await client.get(path)
        assert response.status_code == 200
        assert "max-age" in response.headers["cache-control"]
        keys = response.json()["keys"]
        assert keyring.active.kid in {key["kid"] for key in keys}
        for key in keys:
            assert key["kty"] == "EC" and key["alg"] == "ES256" and key["use"] == "sig"
            assert "d" not in key  # never the private part
            jwk.construct(key, "ES256")
