# sepconv — CPU image: ONNX Runtime (CPU) serving the default model repository over KServe V2.
#
#   docker build -t sepconv .
#   docker run --rm -p 8000:8000 -p 8001:8001 sepconv     # REST on 8000, gRPC on 8001
#   curl localhost:8000/v2/health/ready
#
# Models are exported from models/catalog.toml at build time into /app/models; mount your own Triton-layout
# repository there (or elsewhere, with SEPCONV_REPO) to serve other models. The GPU image is Dockerfile.cuda.
# Behind a TLS-intercepting proxy, give the build's pip a CA bundle (used by the builder stage only):
#   buildah bud --volume /etc/ssl/certs/ca-certificates.crt:/host-ca.crt:ro --build-arg PIP_CERT=/host-ca.crt .

ARG BASE_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------------
# builder: a virtual environment with sepconv + onnxruntime, and the exported default models
# ---------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

WORKDIR /src

# Only used by this stage's pip: a CA bundle path (mounted for the build) when a proxy needs one.
ARG PIP_CERT
# cpu (onnxruntime) here; Dockerfile.cuda uses gpu (onnxruntime-gpu).
ARG ORT_EXTRA=cpu

# Third-party dependencies first, from pyproject.toml alone, so that code changes reuse this layer.
COPY pyproject.toml ./
RUN if [ -z "${PIP_CERT:-}" ]; then unset PIP_CERT; fi \
 && python3 -c "import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies'][sys.argv[1]]))" "${ORT_EXTRA}" > /tmp/requirements.txt \
 && pip install --upgrade pip \
 && pip install -r /tmp/requirements.txt

COPY . .
RUN if [ -z "${PIP_CERT:-}" ]; then unset PIP_CERT; fi \
 && { [ -f README.md ] || echo "sepconv" > README.md; } \
 && pip install --no-deps . \
 && rm -rf ./build ./*.egg-info \
 && sepconv export --catalog models/catalog.toml --repo /opt/models \
 && cp models/catalog.toml /opt/models/catalog.toml \
 && python3 -m pip uninstall -y -q pip setuptools wheel \
 && rm -rf /opt/venv/lib/python3*/site-packages/onnx/backend/test/data \
 && find /opt/venv/lib/python3*/site-packages/numpy -depth -type d -name tests -exec rm -rf {} +

# ---------------------------------------------------------------------------------------------------
# runtime: python3 + the venv + the models, running as an unprivileged user
# ---------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && groupadd --system --gid 10001 sepconv \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin sepconv \
 && install -d -o 10001 -g 10001 /var/lib/sepconv/traces

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/models /app/models
COPY deploy/healthcheck.py /app/healthcheck.py

WORKDIR /app
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SEPCONV_HOST=0.0.0.0 \
    SEPCONV_PORT=8000 \
    SEPCONV_GRPC_PORT=8001 \
    SEPCONV_REPO=/app/models \
    SEPCONV_PROVIDERS=cpu \
    SEPCONV_TRACE_DIR=/tmp/sepconv-traces

USER 10001:10001
# 8000: REST (KServe V2 + Triton extensions); 8001: gRPC (Triton's GRPCInferenceService, grpc.health.v1)
EXPOSE 8000 8001

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "/app/healthcheck.py"]

# The shell form keeps SEPCONV_HOST / SEPCONV_PORT / SEPCONV_GRPC_PORT (0: no gRPC) / SEPCONV_REPO overridable
# with `-e`.
CMD ["/bin/sh", "-c", "exec sepconv serve --host \"$SEPCONV_HOST\" --port \"$SEPCONV_PORT\" --grpc-port \"$SEPCONV_GRPC_PORT\" --repo \"$SEPCONV_REPO\""]
