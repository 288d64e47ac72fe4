"""Keelson's dev kit, a dev dependency never installed in a service image.

- `keelson_dev.cli`: the `keelson` command (`up`, `down`, `status`, `migrate`, `mail`,
  `logs tail`; `create-admin` and `auth ...` run `python -m auth_service admin ...`);
- `keelson_dev.suite`, `keelson_dev.supervision`: the suite `keelson up` runs under supervisor;
- `keelson_dev.embedded`: embedded PostgreSQL and Valkey for laptops and tests;
- `keelson_dev.mailsink`: the SMTP sink of `keelson up`;
- `keelson_dev.testing`: the pytest plugin (fixtures for real servers, `eventually`, ...).
"""

__all__: list[str] = []
