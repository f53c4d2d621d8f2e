# syntax=docker/dockerfile:1
# The edge agent: ONNX Runtime, OpenCV (headless) and paho-mqtt. No torch,
# torchvision or web stack: the image holds only the edgeloop, protocol and
# agent packages, installed with the 'agent' extra.
#
# Build from the repository root:
#   docker build -f deploy/docker/agent.Dockerfile -t edgeloop-agent .
# For a Jetson or another GPU device, start from an image that has CUDA and
# install the 'gpu' extra instead (onnxruntime-gpu; never next to onnxruntime).
#
# Run (see docs/operations.md, "Enrolling a device"):
#   docker run -d --name edgeloop-agent --restart unless-stopped --init \
#     -v /etc/edgeloop:/etc/edgeloop:ro -v edgeloop-agent:/var/lib/edgeloop-agent \
#     --env-file /etc/edgeloop/agent.env --device /dev/video0 edgeloop-agent
# A USB camera also needs --group-add with the host's video group id.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/edgeloop
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgeloop/ edgeloop/
COPY protocol/ protocol/
COPY agent/ agent/
RUN /opt/edgeloop/bin/pip install '.[agent]' \
 && /opt/edgeloop/bin/python -c "import agent.cli, agent.pipeline, sys; sys.exit('torch' in sys.modules)"

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 edgeloop \
 && useradd --system --uid 10001 --gid edgeloop --no-create-home --home-dir /var/lib/edgeloop-agent \
      --shell /usr/sbin/nologin edgeloop \
 && mkdir -p /var/lib/edgeloop-agent /etc/edgeloop \
 && chown edgeloop:edgeloop /var/lib/edgeloop-agent
COPY --from=build /opt/edgeloop /opt/edgeloop
COPY deploy/docker/agent-healthcheck.py /usr/local/bin/edgeloop-agent-healthcheck
ENV PATH=/opt/edgeloop/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EDGELOOP_AGENT_CONFIG=/etc/edgeloop/agent.toml
USER edgeloop
WORKDIR /var/lib/edgeloop-agent
# The outbox, the model versions and state.json: keep them across upgrades.
VOLUME ["/var/lib/edgeloop-agent"]
# Healthy while the agent holds its broker connection. An agent that cannot
# reach the broker keeps sampling into its outbox, but should show up.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/bin/edgeloop-agent-healthcheck"]
# A bad config or model stops the container here with one line per problem,
# before the agent touches its outbox; exec hands PID 1 (and SIGTERM) to it.
CMD ["sh", "-c", "edgeloop agent --check-config \"$EDGELOOP_AGENT_CONFIG\" && exec edgeloop agent --config \"$EDGELOOP_AGENT_CONFIG\""]
