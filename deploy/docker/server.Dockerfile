# syntax=docker/dockerfile:1
# The central server: collector, review UI, trainer and publisher, with
# PyTorch. CPU wheels by default; for NVIDIA GPUs pick the CUDA wheel index:
#
#   docker build -f deploy/docker/server.Dockerfile -t edgeloop-server .
#   docker build -f deploy/docker/server.Dockerfile -t edgeloop-server:cuda \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 .
#
# The CUDA wheels bring their own CUDA libraries; the host needs only the
# NVIDIA driver and the container toolkit (docker run --gpus all).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Kept equal to the Makefile's pins (tests/test_deploy_files.py checks it).
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/edgeloop
# torch first, from the chosen index: the 'trainer' extra then finds it
# installed and does not pull the default (CUDA) wheels from PyPI.
RUN /opt/edgeloop/bin/pip install --index-url "$TORCH_INDEX_URL" \
      "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgeloop/ edgeloop/
COPY protocol/ protocol/
COPY agent/ agent/
COPY trainer/ trainer/
COPY bench/ bench/
RUN /opt/edgeloop/bin/pip install '.[trainer]' \
 && /opt/edgeloop/bin/python -c "import torch, trainer.server.cli; print('torch', torch.__version__)"

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 edgeloop \
 && useradd --system --uid 10001 --gid edgeloop --no-create-home --home-dir /var/lib/edgeloop \
      --shell /usr/sbin/nologin edgeloop \
 && mkdir -p /var/lib/edgeloop /etc/edgeloop \
 && chown edgeloop:edgeloop /var/lib/edgeloop
COPY --from=build /opt/edgeloop /opt/edgeloop
ENV PATH=/opt/edgeloop/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EDGELOOP_SERVER_CONFIG=/etc/edgeloop/server.toml \
    EDGELOOP_HEALTH_URL=http://127.0.0.1:8080/healthz
USER edgeloop
WORKDIR /var/lib/edgeloop
# SQLite database, image blobs, models: see docs/operations.md for backups.
VOLUME ["/var/lib/edgeloop"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['EDGELOOP_HEALTH_URL'], timeout=4)"]
CMD ["sh", "-c", "edgeloop server --check-config \"$EDGELOOP_SERVER_CONFIG\" && exec edgeloop server --config \"$EDGELOOP_SERVER_CONFIG\""]
