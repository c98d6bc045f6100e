# CPU image by default; for GPUs build with --build-arg EXTRA=cuda12 on a CUDA base, e.g.
#   docker build --build-arg BASE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 --build-arg EXTRA=cuda12 .
# Apptainer/Singularity: `apptainer build avila.sif docker-daemon://avila-ml:latest`.
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG EXTRA=examples
RUN if ! command -v python3 >/dev/null; then apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv && rm -rf /var/lib/apt/lists/*; fi
WORKDIR /opt/avila_ml
COPY pyproject.toml README.md ./
COPY avila_ml ./avila_ml
COPY examples ./examples
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir ".[${EXTRA}]"
ENV PATH=/opt/venv/bin:$PATH MPLBACKEND=Agg
CMD ["python", "examples/conv4d_spacetime.py"]
