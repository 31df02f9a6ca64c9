# syntax=docker/dockerfile:1
# Apprentice trainer image (docker-compose.yml's `trainer`, profile "trainer"): torch (CPU
# build) + training/, for `python -m training refresh` on a schedule. The teacher lives and
# dies here: only the distilled student's ONNX file and card leave it, through the registry
# folder the service reads (APPRENTICE_MODEL_DIR). The service image (../Dockerfile) stays
# torch-free.
#
#   docker build -f deploy/trainer.Dockerfile -t apprentice-trainer:0.1.0 .
#
# Its context is the repository; deploy/trainer.Dockerfile.dockerignore (BuildKit) lets in
# what this image copies, as ../.dockerignore does for the service image.

ARG PYTHON_IMAGE=python:3.11.9-slim-bookworm
FROM ${PYTHON_IMAGE}
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY tools/install_torch.py ./tools/
# torch first, from the CPU index (a plain index would bring a CUDA build of several GB)
RUN python tools/install_torch.py --index-url "${TORCH_INDEX_URL}" -c constraints.txt
COPY service/ ./service/
COPY training/ ./training/
RUN pip install -c constraints.txt '.[train]' && pip uninstall -y apprentice
COPY configs/ ./configs/
COPY models/ ./models/
COPY data/ ./data/
# the same uid as the service, so both can write the state volume they share
RUN groupadd --system --gid 10001 apprentice \
    && useradd --system --uid 10001 --gid apprentice --home-dir /app --shell /usr/sbin/nologin apprentice \
    && mkdir -p /app/runs && chown apprentice:apprentice /app/runs
USER apprentice:apprentice
CMD ["python", "-m", "training", "refresh", "--help"]
