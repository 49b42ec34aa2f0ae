"""The Kubernetes deployment as a worker would run it, checked without a cluster: the job the Kubernetes
worker renders from our base job template and deploy/kubernetes.yaml is a valid batch/v1 Job (strict schema
of a recent Kubernetes), requests a GPU, mounts the volume where the image and the flow keep their files; the
Dockerfile builds the project into the folder the pull step uses and bakes in no secret."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import pytest
import yaml

from smoltune.pipeline.kubernetes import DATA_MOUNT, VOLUME, base_job_template
from tests.conftest import REPO

K8S_VERSION = "1.33.0"
IMAGE = "registry.example.org/smoltune:0.1.0"


def deployment() -> dict:
    return yaml.safe_load((REPO / "deploy" / "kubernetes.yaml").read_text())


def dockerfile() -> dict[str, list[str]]:
    """Instruction -> its arguments, in order (line continuations joined)."""
    from dockerfile_parse import DockerfileParser

    parsed = DockerfileParser(path=str(REPO / "Dockerfile"))
    found: dict[str, list[str]] = {}
    for entry in parsed.structure:
        found.setdefault(entry["instruction"], []).append(entry["value"])
    return found


def rendered_job(job_variables: dict) -> dict:
    """The Job manifest the Kubernetes worker would submit for a flow run of the finetune-gpu deployment."""
    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    configuration = asyncio.run(
        KubernetesWorkerJobConfiguration.from_template_and_values(base_job_template(), job_variables)
    )
    configuration.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="brave-otter", flow_id=uuid.uuid4()))
    return configuration.job_manifest


@pytest.fixture(scope="module")
def job() -> dict:
    [finetune_gpu] = deployment()["deployments"]
    variables = {**finetune_gpu["work_pool"]["job_variables"], "image": IMAGE}  # {{ $SMOLTUNE_IMAGE }} resolved
    return rendered_job(variables)


def test_the_rendered_job_is_a_valid_kubernetes_job(job: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(job, K8S_VERSION, strict=True)  # raises on any schema error or unknown field


def test_a_broken_template_would_be_caught() -> None:
    import kubernetes_validate

    broken = rendered_job({"image": IMAGE})
    broken["spec"]["template"]["spec"]["containers"][0]["volumeMountz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_the_job_requests_a_gpu_and_mounts_the_volume(job: dict) -> None:
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == IMAGE
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["volumeMounts"] == [{"name": VOLUME, "mountPath": DATA_MOUNT}]
    assert pod["volumes"] == [{"name": VOLUME, "persistentVolumeClaim": {"claimName": "smoltune-data"}}]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "PREFECT__FLOW_RUN_ID" in env  # the worker's own wiring survived our additions


def test_every_variable_of_the_workers_default_template_is_kept() -> None:
    from prefect_kubernetes.worker import KubernetesWorker

    default = KubernetesWorker.get_default_base_job_template()["variables"]["properties"]
    ours = base_job_template()["variables"]["properties"]
    assert set(default) <= set(ours) and {"gpus", "volume_claim"} <= set(ours)


def test_what_the_flow_writes_lands_on_the_volume() -> None:
    [finetune_gpu] = deployment()["deployments"]
    runs_dir = finetune_gpu["parameters"]["config"]["output"]["runs_dir"]
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(dockerfile()["ENV"])))
    for path in (runs_dir, env["SMOLTUNE_HOME"], env["HF_HOME"]):
        assert Path(path).is_relative_to(DATA_MOUNT), path
    # The parameters are a valid pipeline config (the UI form and `prefect deployment run` accept them).
    from smoltune.config import PipelineConfig

    PipelineConfig.model_validate(finetune_gpu["parameters"]["config"])


def test_the_image_holds_the_project_where_the_pull_step_runs_it() -> None:
    [step] = deployment()["pull"]
    workdir = step["prefect.deployments.steps.set_working_directory"]["directory"]
    instructions = dockerfile()
    assert instructions["WORKDIR"] == [workdir]
    assert instructions["FROM"][0].startswith("nvidia/cuda:")
    copied = " ".join(instructions["COPY"])
    for needed in ("pyproject.toml", "src", "flows", "tasks", "data_checks", "configs"):
        assert re.search(rf"(^|\s){needed}(\s|$)", copied), needed
    [entrypoint] = [d["entrypoint"] for d in deployment()["deployments"]]
    assert (REPO / entrypoint.split(":")[0]).is_file()
    assert any("uv pip install" in run and " ." in run for run in instructions["RUN"])


def test_no_secret_is_baked_into_the_image() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert not re.search(r"(?i)^\s*(ENV|ARG)\b.*(TOKEN|SECRET|PASSWORD|API_KEY)", text, re.MULTILINE)
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "runs"} <= set(ignored)


def test_the_volume_claim_is_valid() -> None:
    import kubernetes_validate

    claim = yaml.safe_load((REPO / "deploy" / "volume.yaml").read_text())
    kubernetes_validate.validate(claim, K8S_VERSION, strict=True)
    assert claim["metadata"]["name"] == base_job_template()["variables"]["properties"]["volume_claim"]["default"]
