# syntax=docker/dockerfile:1
# The Tether server image: docker build -t tether . && docker run -p 50051:50051 -v tether-data:/var/lib/tether tether
#
# Stage 1 builds the wheel and installs it with the server extra into a virtualenv;
# stage 2 is a slim runtime holding only that virtualenv, run as an unprivileged user.

FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY client ./client
COPY service ./service
# pip builds a wheel from the sources just copied and installs it (not editable) with the
# server extra; the dependency versions are pinned in pyproject.toml.
RUN python -m venv /opt/tether \
    && /opt/tether/bin/pip install '.[server]'


FROM python:3.11-slim
LABEL org.opencontainers.image.title="tether" \
      org.opencontainers.image.description="gRPC service that owns conversation sessions for agent platforms"
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/tether --create-home --shell /usr/sbin/nologin tether
COPY --from=builder /opt/tether /opt/tether
ENV PATH="/opt/tether/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TETHER_LISTEN=0.0.0.0:50051 \
    TETHER_DATABASE_URL=sqlite+aiosqlite:////var/lib/tether/tether.db \
    TETHER_LOG_FORMAT=json
# Serving on 0.0.0.0 with neither TETHER_AUTH_FILE nor TLS is refused (exit 2) unless
# TETHER_ALLOW_INSECURE=true: mount the auth file and TLS files read-only and point the
# TETHER_AUTH_FILE / TETHER_TLS_* variables at them. With TLS, the health check below turns
# TLS on by itself; set TETHER_HEALTH_CA_FILE (and, as needed, TETHER_HEALTH_SERVER_NAME,
# TETHER_HEALTH_CERT_FILE / TETHER_HEALTH_KEY_FILE for mutual TLS) so it can verify the server.
# For PostgreSQL set TETHER_DATABASE_URL=postgresql+asyncpg://user:password@host:5432/tether.
WORKDIR /var/lib/tether
VOLUME ["/var/lib/tether"]
USER 10001:10001
EXPOSE 50051
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["tether", "health", "--target", "127.0.0.1:50051"]
ENTRYPOINT ["tether"]
CMD ["serve"]
