# voxares-syncd container image.
#
#   docker build -t voxares-syncd .
#   docker run --read-only --tmpfs /tmp \
#     -v syncd-state:/var/lib/voxares-syncd \
#     -v /srv/syncd/config.toml:/etc/voxares-syncd/config.toml:ro \
#     -v /srv/syncd/api-key:/run/secrets/voxares-api-key:ro \
#     voxares-syncd
#
# The entrypoint migrates the state database before `run`, so a container starts on an
# empty volume. The API key is read from /run/secrets/voxares-api-key (a Docker secret or a
# mounted file readable by uid 10001). The health server binds 127.0.0.1 inside the
# container, which is enough for HEALTHCHECK; set SYNCD_HEALTH__HOST=0.0.0.0 and publish 8787
# to scrape /metrics or probe from outside. See deploy/README.md.

# --- builder: a self-contained virtual environment with the daemon and its drivers -------
# The builder never runs as a container, so it has no HEALTHCHECK.
# hadolint ignore=DL3057
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /opt/voxares-syncd
# Keep every COPY source in step with .dockerignore (an allow-list); .ci/deploy-checks.sh
# checks them and replays this stage to build the same venv without Docker.
COPY pyproject.toml README.md ./
COPY syncd ./syncd
# Alembic migrations ship inside the package as syncd.migrations (see pyproject.toml).
COPY migrations ./migrations
RUN /opt/voxares-syncd/bin/pip install --no-cache-dir ".[postgres,amqp]"

# --- runtime: the venv on a clean slim image, as an unprivileged numeric user -------------
FROM python:3.11-slim

# The state database is syncd's default, /var/lib/voxares-syncd/state.db (the volume); it is
# not set here, so that a database.url in the config file is not silently overridden.
# SYNCD_VOXARES__API_KEY_FILE names where the key is (a Docker secret), not the key: DL3064
# is about values, and this one is a path.
# hadolint ignore=DL3064
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/voxares-syncd/bin:$PATH \
    SYNCD_VOXARES__API_KEY_FILE=/run/secrets/voxares-api-key

RUN groupadd --system --gid 10001 syncd \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /var/lib/voxares-syncd --shell /usr/sbin/nologin syncd \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/voxares-syncd \
 && install -d -m 0755 /etc/voxares-syncd

COPY --from=builder /opt/voxares-syncd /opt/voxares-syncd
COPY deploy/docker/entrypoint.sh /usr/local/bin/syncd-entrypoint

USER 10001:10001
WORKDIR /var/lib/voxares-syncd
VOLUME ["/var/lib/voxares-syncd"]
EXPOSE 8787

# No curl in slim: probe /healthz with the interpreter we already ship. Any exception
# (refused, 503, timeout) exits 1 = unhealthy.
# The probe ignores HTTP_PROXY/HTTPS_PROXY (a container given them for its outbound HTTPS
# would otherwise send its own loopback probe to the proxy and turn unhealthy).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as r; r.build_opener(r.ProxyHandler({})).open('http://127.0.0.1:' + os.environ.get('SYNCD_HEALTH__PORT', '8787') + '/healthz', timeout=4)"]

# `run` migrates first; every other command runs as given (deploy/docker/entrypoint.sh).
ENTRYPOINT ["syncd-entrypoint"]
CMD ["run", "--config", "/etc/voxares-syncd/config.toml"]
