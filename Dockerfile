# One image for the API/UI and the worker. Build with a CUDA-enabled torch for GPU workers:
#   docker build --build-arg TORCH_SPEC="torch==2.13.0" -t vlstudio .
FROM python:3.11-slim

ARG TORCH_SPEC="torch>=2.4,<2.15"
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 VLSTUDIO_DATA_DIR=/data

RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY backend ./backend
COPY worker ./worker
COPY ui ./ui
RUN pip install "${TORCH_SPEC}" && pip install -e .

VOLUME ["/data"]
EXPOSE 7860
CMD ["vlstudio", "api", "--with-ui", "--host", "0.0.0.0"]
