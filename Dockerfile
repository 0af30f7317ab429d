# The service's image, CPU or GPU:
#   docker build -t bgremove-cpu .
#   docker build -t bgremove-gpu --build-arg VARIANT=gpu \
#     --build-arg BASE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04 --build-arg EXTRAS=,ai .
# EXTRAS=,ai adds torch/transformers/diffusers for text prompts and /image/generate/v1
# (CPU image: EXTRAS=,ai,ai-cpu keeps torch to its CPU wheel).
# It runs as an unprivileged user (uid 1000, as the k8s manifests expect), has no model weights
# (they live on a volume filled by `bgremove models pull`), and has paid rembg's first import
# (~45 s of numba compilation) at build time, so no replica pays it at start.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ARG VARIANT=cpu
ARG EXTRAS=""
# MALLOC_ARENA_MAX=2: two malloc arenas per process, not 8 per core (docs/benchmarks.md, soak)
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MALLOC_ARENA_MAX=2 \
    VIRTUAL_ENV=/opt/bgremove PATH=/opt/bgremove/bin:$PATH \
    NUMBA_CACHE_DIR=/opt/bgremove/numba-cache NUMBA_CPU_NAME=generic \
    BGR_MODELS_DIR=/models BGR_DATA_DIR=/data BGR_CATALOG_PATH=/app/configs/models.yaml

# python3.11 for CUDA (Ubuntu 22.04) base images (the python image has it already); wget for
# KubeRay's probes; uid 1000 freed if the base image gave it to someone else.
RUN if ! command -v python3.11 >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
        && rm -rf /var/lib/apt/lists/*; fi \
    && apt-get update && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv $VIRTUAL_ENV \
    && (userdel -r "$(getent passwd 1000 | cut -d: -f1)" 2>/dev/null || true) \
    && useradd --uid 1000 --create-home --shell /bin/bash ray

WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipelines ./pipelines
COPY deployments ./deployments
COPY serve_app ./serve_app
COPY configs ./configs
RUN pip install -e ".[${VARIANT},postgres${EXTRAS}]" \
    && python -c "import rembg, serve_app.ingress" \
    && ln -s $VIRTUAL_ENV/bin/ray $VIRTUAL_ENV/bin/serve $VIRTUAL_ENV/bin/bgremove /usr/local/bin/ \
    && chown -R ray:ray $NUMBA_CACHE_DIR \
    && mkdir -p /models /data && chown ray:ray /models /data

USER 1000
EXPOSE 8000 8265 6379 10001 8080
# API keys on; the first one: docker exec CONTAINER bgremove keys create NAME (it prints the
# secret once). Binding 0.0.0.0 is safe only because keys are on (docs/operations.md).
CMD ["bgremove", "serve", "configs/local.yaml", "--host", "0.0.0.0"]
