# syntax=docker/dockerfile:1.7
# One image for every Keelson service, with the runtime only (the `keelson` library and the
# five services; no dev kit); the command picks the service:
#   docker run keelson python -m auth_service                 # serve
#   docker run keelson python -m auth_service --migrate-only  # upgrade its schema and exit
#   docker run keelson python -m auth_service admin create-admin EMAIL  # operator commands
# Installed with uv from the committed uv.lock, so the image gets exactly the locked versions.

ARG PYTHON_VERSION=3.11
ARG UV_VERSION=0.13.9

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

# ---------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS builder

COPY --from=uv /uv /uvx /usr/local/bin/

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_PROJECT_ENVIRONMENT=/opt/keelson/venv

WORKDIR /src

# Third-party dependencies first, from the lock file and the members' pyproject.toml only,
# so that a change to the code does not invalidate this (slow) layer.
COPY pyproject.toml uv.lock ./
COPY libs/common/pyproject.toml libs/common/pyproject.toml
# The dev kit (keelson-dev: `keelson up`, embedded PostgreSQL and Valkey, supervisor, the
# pytest plugin) is a dev dependency: uv reads its pyproject.toml to know the workspace,
# and `--no-dev` installs none of it; its source is not in the build context.
COPY libs/dev/pyproject.toml libs/dev/pyproject.toml
COPY services/gateway/pyproject.toml services/gateway/pyproject.toml
COPY services/auth/pyproject.toml services/auth/pyproject.toml
COPY services/logs/pyproject.toml services/logs/pyproject.toml
COPY services/notifications/pyproject.toml services/notifications/pyproject.toml
COPY services/payments/pyproject.toml services/payments/pyproject.toml
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-install-workspace

# Then the workspace itself, installed as wheels (not editable): the runtime stage needs
# only the virtual environment, not the source tree.
COPY libs/common libs/common
COPY services services
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable

# ---------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime

ARG KEELSON_UID=10001
RUN groupadd --system --gid "${KEELSON_UID}" keelson \
    && useradd --system --uid "${KEELSON_UID}" --gid keelson \
        --home-dir /app --no-create-home --shell /usr/sbin/nologin keelson \
    && mkdir -p /app /tmp/keelson \
    && chown keelson:keelson /app /tmp/keelson

COPY --from=builder /opt/keelson/venv /opt/keelson/venv
COPY deploy/docker/healthcheck.py /usr/local/bin/keelson-healthcheck
RUN chmod 0755 /usr/local/bin/keelson-healthcheck

# Bytecode was compiled at build time, so a read-only root filesystem costs nothing.
# Writable state (the log shipper's spill files) goes under /tmp, an emptyDir in Kubernetes.
ENV PATH=/opt/keelson/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KEELSON_HOST=0.0.0.0 \
    KEELSON_PORT=8000 \
    KEELSON_LOG__SPILL_DIR=/tmp/keelson/spill

WORKDIR /app
USER ${KEELSON_UID}:${KEELSON_UID}

EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/usr/local/bin/keelson-healthcheck", "/health/live"]

CMD ["python", "-m", "gateway"]
