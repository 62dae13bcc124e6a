# syntax=docker/dockerfile:1
# acg2vec images. Two targets:
#   docker build -t acg2vec:0.1.0 .                                    # the server; models mounted at /models
#   docker build -t acg2vec:0.1.0 --build-arg BAKE_MODELS=1 .          # the server with the default models baked in
#   docker build -t acg2vec-trainer:0.1.0 --target trainer .           # builds/trains models (PyTorch)
#   docker run -p 50051:50051 -p 9090:9090 -v "$PWD/var/models:/models:ro" -v "$PWD/secrets:/etc/acg2vec:ro" \
#     -e ACG2VEC_AUTH_TOKENS_FILE=/etc/acg2vec/tokens -e ACG2VEC_TLS_CERT_FILE=/etc/acg2vec/tls.crt \
#     -e ACG2VEC_TLS_KEY_FILE=/etc/acg2vec/tls.key acg2vec:0.1.0        # token auth is on by default (docs/security.md)
# The server image runs `acg2vec serve` (default) and `acg2vec index ...`; the trainer image runs
# `acg2vec models build-defaults ...`, `acg2vec models import ...` and `acg2vec train ...`.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG BAKE_MODELS=0

# ---------------------------------------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY . .
# constraints.txt pins the whole dev set, torch included; torch is a training-time dependency (a local CPU
# build that the registry must never be asked for), so its pin is dropped and the build fails if anything
# still pulls it in.
RUN grep -v -i -E '^torch([=<>!~ ;[]|$)' constraints.txt > /tmp/constraints-server.txt \
 && pip install -c /tmp/constraints-server.txt ./clients/python . \
 && pip check \
 && if pip show torch >/dev/null 2>&1; then echo "torch must not be in the server image" >&2; exit 1; fi

# ---------------------------------------------------------------------------------------------- trainer
# What `acg2vec models build-defaults` needs beyond the server: PyTorch (the CPU build, from PyTorch's own CPU
# index so that no CUDA build is ever pulled) and sentence-transformers to train the text model. Nothing else:
# nsfwjs and bangumi-data come from the npm registry and the openclipart packages from the Debian mirror in the
# image's /etc/apt/sources.list.d, over HTTPS, fetched and unpacked in Python (no npm, Node.js, apt or dpkg).
FROM builder AS trainer
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install -c constraints.txt ./clients/python '.[train]' \
 && pip check \
 && groupadd --system --gid 10001 acg2vec \
 && useradd --system --uid 10001 --gid acg2vec --home-dir /tmp --shell /usr/sbin/nologin acg2vec \
 && mkdir -p /models /cache \
 && chown acg2vec:acg2vec /models /cache
ENV HOME=/tmp \
    ACG2VEC_MODEL_REPOSITORY=/models
WORKDIR /cache
USER 10001:10001
ENTRYPOINT ["acg2vec"]
CMD ["models", "build-defaults", "--repository", "/models", "--cache-dir", "/cache"]

# ---------------------------------------------------------------------------------------------- models
# BAKE_MODELS picks the stage: models-0 leaves /models empty (a mount point for a model repository volume) and
# never builds the trainer; models-1 builds the default models into /models (TF-Serving layout + models.config).
FROM builder AS models-0
RUN mkdir -p /models

FROM trainer AS models-1
RUN acg2vec models build-defaults --repository /models --cache-dir /tmp/acg2vec-cache \
 && acg2vec models write-config --repository /models --base-path /models \
 && rm -rf /tmp/acg2vec-cache

# hadolint ignore=DL3006
FROM models-${BAKE_MODELS} AS models

# ---------------------------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="acg2vec" \
      org.opencontainers.image.description="gRPC service for anime illustration tagging, feature vectors and similar-image search" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 acg2vec \
 && useradd --system --uid 10001 --gid acg2vec --home-dir /var/lib/acg2vec --shell /usr/sbin/nologin acg2vec \
 && mkdir -p /var/lib/acg2vec /models \
 && chown acg2vec:acg2vec /var/lib/acg2vec /models
COPY --from=builder /opt/venv /opt/venv
COPY --from=models --chown=10001:10001 /models /models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/acg2vec \
    ACG2VEC_LISTEN=0.0.0.0:50051 \
    ACG2VEC_METRICS_PORT=9090 \
    ACG2VEC_DATA_DIR=/var/lib/acg2vec \
    ACG2VEC_MODEL_REPOSITORY=/models \
    ACG2VEC_HEALTH_LISTEN=127.0.0.1:50052
WORKDIR /var/lib/acg2vec
USER 10001:10001
EXPOSE 50051 9090
# grpcurl is not in the image: ask grpc.health.v1 (overall service "") with the grpc_health stubs, on the plaintext
# health-only port (ACG2VEC_HEALTH_LISTEN, loopback in the image: it works with TLS and mutual TLS on the gRPC
# port and exposes nothing); without one, on the gRPC port (plaintext only).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; port = (os.environ.get('ACG2VEC_HEALTH_LISTEN') or os.environ.get('ACG2VEC_LISTEN', '0.0.0.0:50051')).rsplit(':', 1)[1]; r = g.HealthStub(grpc.insecure_channel('127.0.0.1:' + port)).Check(h.HealthCheckRequest(service=''), timeout=4); sys.exit(0 if r.status == h.HealthCheckResponse.SERVING else 1)"]
ENTRYPOINT ["acg2vec"]
CMD ["serve"]
