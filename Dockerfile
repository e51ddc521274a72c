# The eksinfer gateway image: `eksinfer gateway` on the lean install (base + the `gateway` extra: no
# matplotlib, no schema bundles), as a non-root user, on a root filesystem it never writes to.
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/OWNER/eksinfer:TAG .
#
# PYTHON_IMAGE may be any Debian-based image with python3 and the venv module (CI uses python:3.12-slim;
# docs/deploy.md shows a build from a Debian root filesystem made with mmdebstrap, with no registry at all).
ARG PYTHON_IMAGE=docker.io/library/python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python3 -m venv /opt/eksinfer
COPY pyproject.toml README.md ./
COPY src ./src
# Byte-compiled here, so the read-only runtime never needs to write __pycache__.
RUN /opt/eksinfer/bin/pip install ".[gateway]" \
 && /opt/eksinfer/bin/pip uninstall -y pip \
 && /opt/eksinfer/bin/python -m compileall -q /opt/eksinfer/lib

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/eksinfer /opt/eksinfer
# Where the Deployment mounts its ConfigMap (gateway.yaml); owned by root, read-only to the gateway.
RUN mkdir -p /etc/eksinfer
# 65532: the conventional "nonroot" uid, the one the rendered Deployment runs as (runAsUser).
USER 65532:65532
ENV PATH=/opt/eksinfer/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    EKSINFER_HEALTH_URL=http://127.0.0.1:8000/health
WORKDIR /tmp

EXPOSE 8000
# For docker/podman; Kubernetes uses the Deployment's probes on the same path.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['EKSINFER_HEALTH_URL'], timeout=2)"]
ENTRYPOINT ["eksinfer", "gateway"]
CMD ["--config", "/etc/eksinfer/gateway.yaml"]
