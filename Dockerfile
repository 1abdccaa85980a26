# One image for every EPM process: `docker run IMAGE gateway`, `... request-svc`,
# `... streams-apply` (see deploy/docker/entrypoint.sh and deploy/README.md).
#
# The base is pinned to an exact Python patch release and Debian release. Pin it
# further to a digest (python:3.11.14-slim-bookworm@sha256:...) in the registry
# you build from; this repository cannot resolve digests offline.

# ---- builder: resolve the locked dependencies into /app/.venv --------------------
FROM python:3.11.14-slim-bookworm AS builder

# uv from PyPI, pinned; it never leaves this stage.
RUN pip install --no-cache-dir uv==0.13.9

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

WORKDIR /src
# The whole workspace (pyproject, lock, every member) is needed to resolve it;
# .dockerignore keeps tests, benches, local data and virtualenvs out.
COPY pyproject.toml uv.lock ./
COPY libs ./libs
COPY services ./services
# --no-editable: workspace members are installed as wheels, so the final stage
# needs /app/.venv only, never the sources.
RUN uv sync --frozen --no-dev --no-editable \
    && /app/.venv/bin/epm --help > /dev/null

# ---- final: the virtualenv, the entrypoint, a non-root user; no pip, no uv ------
FROM python:3.11.14-slim-bookworm

LABEL org.opencontainers.image.title="epm" \
      org.opencontainers.image.description="EPM: endpoint privilege management backend (all services)" \
      org.opencontainers.image.source="deploy/README.md"

# Build tools and package managers have no business in the running image.
RUN pip uninstall --yes --no-cache-dir pip setuptools wheel \
    && groupadd --system --gid 10001 epm \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /var/lib/epm --shell /usr/sbin/nologin epm \
    && mkdir -p /var/lib/epm \
    && chown 10001:10001 /var/lib/epm

COPY --from=builder /app/.venv /app/.venv
COPY deploy/docker/entrypoint.sh /app/entrypoint.sh

ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EPM_DATA_DIR=/var/lib/epm \
    EPM_HTTP_HOST=0.0.0.0 \
    EPM_HTTP_PORT=8080 \
    EPM_HEALTH_PORT=8081

WORKDIR /var/lib/epm
USER 10001:10001
EXPOSE 8080 8081

ENTRYPOINT ["/app/entrypoint.sh"]
CMD ["--help"]
