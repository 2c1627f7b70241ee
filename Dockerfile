# One image for the API/UI and the worker.
#
#   docker build -t vlstudio .                     # python:3.11-slim base, torch from PyPI (CUDA build)
#
# On a machine that cannot pull from a registry, build the base from Debian's packages and pass a
# local torch wheel (docs/deploy.md):
#
#   bash deploy/build-base.sh                      # -> vlstudio-base:bookworm
#   cp torch-2.13.0+cpu-*.whl deploy/wheels/
#   docker build --network host --build-arg BASE_IMAGE=vlstudio-base:bookworm \
#       --build-arg TORCH_SPEC="torch==2.13.0+cpu" -t vlstudio .
#
# Any base with Python 3.10+ (venv module) and apt works. Wheels in deploy/wheels/ are preferred
# by pip over the index (--find-links); TORCH_SPEC picks the build. For GPU workers, PyPI's default
# Linux torch is the CUDA one; another CUDA release: TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128.
ARG BASE_IMAGE=python:3.11-slim

# The dependency list alone, read from pyproject.toml in a stage of its own: the final image copies
# only this file, so a change to pyproject.toml that leaves [project].dependencies as they are (the
# version, the test extras, pytest settings) keeps the dependency layer cached.
FROM ${BASE_IMAGE} AS requirements
COPY pyproject.toml /tmp/pyproject.toml
RUN python3 -c "import tomllib; print('\n'.join(sorted(tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies'])))" \
        > /tmp/requirements.txt

FROM ${BASE_IMAGE}

ARG TORCH_SPEC="torch>=2.4,<2.15"
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH VLSTUDIO_DATA_DIR=/data

# g++ and Python's headers: DeepSpeed compiles its C++ ops (CPU collectives, adamw_deepspeed).
RUN apt-get update \
    && headers=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['include'])") \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends g++ git \
        $([ -e "$headers/Python.h" ] || echo python3-dev) \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# Layers from the least to the most often changed: torch, then the dependencies named in
# pyproject.toml (only a change to that list rebuilds them), then the code (a code change rebuilds
# only the last, small layers).
COPY deploy/wheels/ /tmp/wheels/
RUN pip install --find-links /tmp/wheels ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "${TORCH_SPEC}" \
    && rm -rf /tmp/wheels
WORKDIR /app
COPY --from=requirements /tmp/requirements.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt
# With a CPU torch, jobs train on CPUs, where DeepSpeed's collectives use its shared-memory op:
# built here once, not at every container's first job.
ENV TORCH_EXTENSIONS_DIR=/opt/torch_extensions
RUN if python -c "import sys, torch; sys.exit(torch.version.cuda is not None)"; then \
        python -c "from deepspeed.accelerator import get_accelerator; get_accelerator().create_op_builder('ShareMemCommBuilder').load()"; \
    fi
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY backend ./backend
COPY worker ./worker
COPY ui ./ui
RUN pip install --no-deps -e . && vlstudio --help > /dev/null

VOLUME ["/data"]
EXPOSE 7860
ENV VLSTUDIO_HOST=0.0.0.0 VLSTUDIO_PORT=7860
CMD ["vlstudio", "api", "--with-ui"]
