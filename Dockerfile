# syntax=docker/dockerfile:1
# Apprentice signal service image: the runtime dependencies only (no torch, no training extra).
#
#   docker build -t apprentice:0.1.0 .
#   docker run --rm -p 127.0.0.1:8000:8000 apprentice:0.1.0
#
# The same image runs the replay exchange:  docker run apprentice:0.1.0 python -m service.replay ...

ARG PYTHON_IMAGE=python:3.11.9-slim-bookworm

# ---- build: resolve and install the [project] dependencies into a virtual environment ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Only what the package build needs: the metadata and the service package (training/ is not
# copied, so nothing of it can reach the image).
COPY pyproject.toml README.md ./
COPY service/ ./service/
# `pip install .` without extras = exactly pyproject's [project] dependencies (tests/deploy
# checks that torch is not among them, nor among their requirements). The package itself is
# then removed from site-packages: the code runs from /app beside models/ and data/, which
# settings.py and kline_io.py locate relative to the package directory.
RUN pip install . \
    && pip uninstall -y apprentice

# ---- runtime ----
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="apprentice" \
      org.opencontainers.image.description="Distilled ONNX student serving Bybit kline signals, with paper trading and Prometheus metrics"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    APPRENTICE_HOST=0.0.0.0 \
    APPRENTICE_PORT=8000 \
    APPRENTICE_SYMBOLS=BTCUSDT \
    APPRENTICE_INTERVAL=5 \
    APPRENTICE_MODEL=/app/models/student_pooled_5m.onnx \
    APPRENTICE_STATE_DIR=/var/lib/apprentice
RUN groupadd --system --gid 10001 apprentice \
    && useradd --system --uid 10001 --gid apprentice --home-dir /app --shell /usr/sbin/nologin apprentice \
    && mkdir -p /var/lib/apprentice \
    && chown apprentice:apprentice /var/lib/apprentice
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Code and artefacts are owned by root and read-only for the service user; only the state
# directory (a named volume in docker-compose.yml) is writable.
COPY service/ /app/service/
COPY models/ /app/models/
COPY data/ /app/data/
# Bytecode compiled now: at run time the service user cannot write it (faster start).
RUN python -m compileall -q /app/service
USER apprentice:apprentice
EXPOSE 8000
# python:slim has no curl: probe /health with the standard library, on the configured port.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('APPRENTICE_PORT', '8000'), timeout=4)"]
# Exec form: python is PID 1's direct child under `docker run --init` / compose `init: true`
# (or PID 1 itself), so SIGTERM reaches uvicorn, whose lifespan shuts the feed down cleanly.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service"]
