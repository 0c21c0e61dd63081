"""Write the base job templates of bergson's work pools (process.json, docker.json, kubernetes.json).

Each starts from the default template Prefect ships for that worker type (the copy bundled with the
installed `prefect`, so no network is needed) and adds what a bergson worker needs:

- every pool: env defaults (JSON result serializer, the task runner, flow-run heartbeats every 30 s,
  a gradient cache folder);
- docker: the bergson GPU image, GPU device requests (`docker run --gpus all`) through the
  `container_create_kwargs` variable (needs prefect-docker >= 0.7 in the worker), the compose network;
- kubernetes: the bergson GPU image, an `nvidia.com/gpu` limit (variable `gpu_limit`, default 1), a
  toleration for tainted GPU nodes, shared memory for the data loader.

Run `python deployments/work-pools/make_templates.py` after upgrading Prefect and commit the result.
The tests check that the committed files equal what this script writes.
"""

from __future__ import annotations

import copy
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
GPU_IMAGE = "bergson-worker:gpu"

COMMON_ENV = {
    "PREFECT_RESULTS_DEFAULT_SERIALIZER": "json",  # task results are small JSON refs, never pickles
    "BERGSON_TASK_RUNNER": "threads",  # threads | dask | ray, see flows/runners.py
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",  # what `bergson deploy`'s zombie-run automation watches
}


def prefect_defaults() -> dict:
    import prefect

    path = os.path.join(os.path.dirname(prefect.__file__), "server", "api", "collections_data", "views",
                        "aggregate-worker-metadata.json")
    with open(path) as f:
        meta = json.load(f)
    return {
        "process": meta["prefect"]["process"]["default_base_job_configuration"],
        "docker": meta["prefect-docker"]["docker"]["default_base_job_configuration"],
        "kubernetes": meta["prefect-kubernetes"]["kubernetes"]["default_base_job_configuration"],
    }


def _env(template: dict, extra: dict) -> None:
    template["variables"]["properties"]["env"]["default"] = {**COMMON_ENV, **extra}


def process(t: dict) -> dict:
    t = copy.deepcopy(t)
    _env(t, {})
    t["variables"]["description"] = "A bergson worker on this machine: flow runs are subprocesses of the worker."
    return t


def docker(t: dict) -> dict:
    t = copy.deepcopy(t)
    props = t["variables"]["properties"]
    _env(t, {"BERGSON_CACHE": "/tmp/bergson-cache", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility"})
    props["image"]["default"] = GPU_IMAGE
    props["image_pull_policy"]["default"] = "IfNotPresent"
    props["auto_remove"]["default"] = True
    props["networks"]["default"] = ["bergson"]  # the network of docker/compose.yaml
    props["container_create_kwargs"] = {
        "title": "Container Configuration",
        "description": "Extra docker-py create() arguments. The default requests every GPU of the host "
        "(like `docker run --gpus all`); set it to {} for CPU-only hosts.",
        "type": "object",
        "default": {"device_requests": [{"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}],
                    "shm_size": "2g"},
    }
    t["job_configuration"]["container_create_kwargs"] = "{{ container_create_kwargs }}"
    t["variables"]["description"] = "bergson GPU containers on a Docker host with the NVIDIA container toolkit."
    return t


def kubernetes(t: dict) -> dict:
    t = copy.deepcopy(t)
    props = t["variables"]["properties"]
    _env(t, {"BERGSON_CACHE": "/tmp/bergson-cache"})
    props["image"]["default"] = GPU_IMAGE
    props["gpu_limit"] = {
        "title": "GPUs",
        "description": "nvidia.com/gpu limit of the job's container (the NVIDIA device plugin schedules it).",
        "type": "string",
        "default": "1",
    }
    props["gpu_toleration_key"] = {
        "title": "GPU node taint",
        "description": "Taint key of GPU nodes that the job tolerates.",
        "type": "string",
        "default": "nvidia.com/gpu",
    }
    pod = t["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    container["resources"]["limits"]["nvidia.com/gpu"] = "{{ gpu_limit }}"
    container["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    pod["volumes"] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}}]
    pod["tolerations"] = [{"key": "{{ gpu_toleration_key }}", "operator": "Exists", "effect": "NoSchedule"}]
    t["variables"]["description"] = "bergson GPU jobs on Kubernetes (one Job per flow run, GPU requested)."
    return t


BUILDERS = {"process": process, "docker": docker, "kubernetes": kubernetes}


def render() -> dict[str, str]:
    defaults = prefect_defaults()
    return {f"{k}.json": json.dumps(fn(defaults[k]), indent=2, sort_keys=True) + "\n" for k, fn in BUILDERS.items()}


def main() -> int:
    for name, text in render().items():
        with open(os.path.join(HERE, name), "w") as f:
            f.write(text)
        print(f"wrote {os.path.join(HERE, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
