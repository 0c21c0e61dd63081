"""deployments/prefect.yaml: one deployment per flow of the flows package, each loadable from its
module entrypoint, with the nightly build registered off."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import yaml

import flows

SPEC = Path(__file__).resolve().parents[2] / "deployments" / "prefect.yaml"


def _all_flows() -> dict[str, str]:
    """flow name -> module:attribute of every Prefect flow defined in flows/."""
    from prefect import Flow

    out = {}
    for info in pkgutil.iter_modules(flows.__path__):
        mod = importlib.import_module(f"flows.{info.name}")
        for attr, obj in vars(mod).items():
            if isinstance(obj, Flow) and obj.fn.__module__ == mod.__name__:
                out[obj.name] = f"{mod.__name__}:{attr}"
    return out


def test_every_flow_has_a_deployment():
    from prefect.flows import load_flow_from_entrypoint

    deployments = yaml.safe_load(SPEC.read_text())["deployments"]
    deployed = {load_flow_from_entrypoint(d["entrypoint"]).name: d for d in deployments}
    missing = set(_all_flows()) - set(deployed)
    assert not missing, f"flows without a deployment in {SPEC}: {sorted(missing)} (add an entry per flow)"
    for name, d in deployed.items():
        assert d["entrypoint"] == _all_flows()[name], name  # module paths: no source pulled at run time
        assert d["enforce_parameter_schema"] is True and d["work_pool"]["name"] == "{{ $BERGSON_WORK_POOL }}"
    assert yaml.safe_load(SPEC.read_text())["pull"] == []


def test_nightly_schedule_is_off_by_default():
    build = next(d for d in yaml.safe_load(SPEC.read_text())["deployments"] if d["name"] == "build-index")
    (nightly,) = build["schedules"]
    assert nightly["active"] is False and nightly["slug"] == "nightly-corpus-build"
    assert set(nightly["parameters"]["config"]) >= {"index", "model", "dataset"}


def test_deployment_versions_are_the_package_version():
    """The version is declared once (bergson_core/version.py); prefect.yaml's anchor must follow it."""
    from bergson_core.version import __version__

    deployments = yaml.safe_load(SPEC.read_text())["deployments"]
    assert deployments and {d["version"] for d in deployments} == {__version__}
