"""Work-pool base job templates: the committed files are what make_templates.py writes, the server
accepts all three, and the Kubernetes and Docker jobs ask for GPUs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

POOLS = Path(__file__).resolve().parents[2] / "deployments" / "work-pools"


def _load(name: str) -> dict:
    return json.loads((POOLS / f"{name}.json").read_text())


def test_committed_templates_are_generated():
    spec = importlib.util.spec_from_file_location("make_templates", POOLS / "make_templates.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name, text in mod.render().items():
        assert (POOLS / name).read_text() == text, f"{name} is stale: run python deployments/work-pools/make_templates.py"


def test_kubernetes_job_requests_a_gpu():
    from prefect.utilities.templating import apply_values

    t = _load("kubernetes")
    defaults = {k: v["default"] for k, v in t["variables"]["properties"].items() if "default" in v}
    job = apply_values(t["job_configuration"], {**defaults, "image": "bergson-worker:gpu", "command": "x"})
    pod = job["job_manifest"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"] == "bergson-worker:gpu"
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "cpu" not in container["resources"]["limits"]  # unset variables drop out of the manifest
    job = apply_values(t["job_configuration"], {**defaults, "gpu_limit": "4"})
    assert job["job_manifest"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][
        "nvidia.com/gpu"] == "4"


def test_docker_job_requests_gpus():
    t = _load("docker")
    kwargs = t["variables"]["properties"]["container_create_kwargs"]["default"]
    assert kwargs["device_requests"][0]["capabilities"] == [["gpu"]]
    assert t["job_configuration"]["container_create_kwargs"] == "{{ container_create_kwargs }}"
    import docker.types

    # docker-py turns the dicts into DeviceRequest objects (what `docker run --gpus all` sends)
    host = docker.types.HostConfig(version="1.44", device_requests=kwargs["device_requests"])
    assert host["DeviceRequests"][0]["Capabilities"] == [["gpu"]] and host["DeviceRequests"][0]["Count"] == -1


@pytest.mark.parametrize("kind", ["process", "docker", "kubernetes"])
def test_server_accepts_template(kind, prefect_client):
    from prefect.client.schemas.actions import WorkPoolCreate

    pool = prefect_client.create_work_pool(WorkPoolCreate(name=f"template-{kind}", type=kind,
                                                          base_job_template=_load(kind)), overwrite=True)
    assert pool.base_job_template == _load(kind)
    env = pool.base_job_template["variables"]["properties"]["env"]["default"]
    assert env["PREFECT_RESULTS_DEFAULT_SERIALIZER"] == "json" and env["BERGSON_TASK_RUNNER"] == "threads"
    prefect_client.delete_work_pool(f"template-{kind}")
