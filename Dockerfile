# reviewflow: the pipeline + its scheduled deployments (`reviewflow serve`).
# CPU image; torch is pinned in pyproject.toml and comes from the CPU wheel index.
# The same image runs the Dask scheduler and workers (docker-compose.yml), so the flow that submits the
# tasks and the workers that run them have the same dask/distributed/torch/reviewflow versions.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu \
    REVIEWFLOW_WAREHOUSE=/warehouse \
    PREFECT_SERVER_ANALYTICS_ENABLED=false

WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY flows ./flows
# dask: the scheduler/worker processes; s3fs: a scratch or warehouse on s3:// (REVIEWFLOW_SCRATCH).
RUN pip install --upgrade pip && pip install ".[dask]" "s3fs>=2024.1"

RUN useradd --create-home --uid 1000 reviewflow \
    && mkdir -p /warehouse && chown reviewflow:reviewflow /warehouse
USER reviewflow
VOLUME ["/warehouse"]

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os,urllib.request; urllib.request.urlopen(os.environ['PREFECT_API_URL'].rstrip('/') + '/health', timeout=4)"

CMD ["reviewflow", "serve"]
