"""The Kubernetes work pool's base job template: Prefect's default one for the Kubernetes worker plus what a
smoltune run needs there, a GPU and a volume that outlives the pod.

    python -m smoltune.pipeline.kubernetes > job-template.json     # needs prefect-kubernetes, as the worker does
    prefect work-pool create smoltune-k8s --type kubernetes --base-job-template job-template.json

Built from the installed worker's own default (`KubernetesWorker.get_default_base_job_template`) rather than
a copied file, so every variable that worker knows (image, env, namespace, cpu/memory, service account...)
stays; added: `gpus` (the `nvidia.com/gpu` limit, default 1) and `volume_claim` (a PersistentVolumeClaim
mounted at DATA_MOUNT, where the image keeps SMOLTUNE_HOME and the HF cache and deploy/kubernetes.yaml puts
runs/, the stage cache and the registry: a pod's own disk is gone when it ends).
"""

from __future__ import annotations

import copy
import json
from typing import Any

# Where the volume is mounted; the Dockerfile's SMOLTUNE_HOME / HF_HOME and deploy/kubernetes.yaml's
# output.runs_dir live under it (tests/pipeline/test_kubernetes.py checks that they agree).
DATA_MOUNT = "/var/lib/smoltune"
VOLUME = "smoltune-data"


def base_job_template() -> dict[str, Any]:
    """The default Kubernetes worker template with a GPU limit and the data volume."""
    from prefect_kubernetes.worker import KubernetesWorker

    template = copy.deepcopy(KubernetesWorker.get_default_base_job_template())
    template["variables"]["properties"].update(
        {
            "gpus": {
                "title": "GPUs",
                "description": "NVIDIA GPUs for the flow run's pod (nvidia.com/gpu); 0 runs it on the CPU.",
                "type": "integer",
                "minimum": 0,
                "default": 1,
            },
            "volume_claim": {
                "title": "Volume claim",
                "description": f"PersistentVolumeClaim mounted at {DATA_MOUNT}: runs, stage cache, registry, "
                "adapters and converted models survive the pod (deploy/volume.yaml creates one).",
                "type": "string",
                "default": VOLUME,
            },
        }
    )
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    job = template["job_configuration"]["job_manifest"]["spec"]
    # The default puts the Job's completions / parallelism in the pod spec, where Kubernetes does not read them
    # (and a strict schema check refuses them); they belong to the Job.
    for field in ("completions", "parallelism"):
        if field in pod:
            job[field] = pod.pop(field)
    container = pod["containers"][0]
    container["resources"]["limits"]["nvidia.com/gpu"] = "{{ gpus }}"
    container["volumeMounts"] = [{"name": VOLUME, "mountPath": DATA_MOUNT}]
    pod["volumes"] = [{"name": VOLUME, "persistentVolumeClaim": {"claimName": "{{ volume_claim }}"}}]
    return template


if __name__ == "__main__":
    print(json.dumps(base_job_template(), indent=2))
