# Avila ML image: CPU by default, CUDA with build arguments; MPICH (the mpich wheel) inside.
#
#   docker build -t avila-ml:cpu .
#   docker build -t avila-ml:cuda12 --build-arg BASE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 \
#       --build-arg EXTRAS=cuda12,distributed,examples .
#
# NCCL comes from the nvidia-nccl-cu12 wheel of the cuda12 extra; CuPy finds it at run time.
# On a cluster, bind-mount the host's MPICH-ABI MPI (Cray MPICH, Intel MPI, MVAPICH) and point
# mpi4py at it with MPI4PY_LIBMPI (see README, "Clusters"). Apptainer/Singularity:
#   apptainer build avila.sif docker-daemon://avila-ml:cuda12
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG EXTRAS=distributed,examples,cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# CUDA base images have no Python: add the distribution's (the slim Python image skips this).
# libgomp1: the OpenMP runtime of the oneDNN wheel (the cpu extra) that the CPU convolutions use,
# and of the element-wise kernels compiled at install (setup.py; gcc and the C headers are
# removed again after the build).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && if ! command -v python3 >/dev/null; then \
        apt-get install -y --no-install-recommends python3 python3-venv python3-dev; \
    fi \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/avila_ml
COPY pyproject.toml setup.py README.md ./
COPY avila_ml ./avila_ml
COPY examples ./examples
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir ".[${EXTRAS}]" \
    && /opt/venv/bin/python -c "import avila_ml.cpu_accel as c; assert c.kernels_available(), c.kernels_absent_reason()" \
    && apt-get purge -y --auto-remove gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

ENV PATH=/opt/venv/bin:$PATH \
    MPLBACKEND=Agg
CMD ["python", "examples/conv4d_spacetime.py"]
