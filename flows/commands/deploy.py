"""`bergson deploy`: register the pipeline with a running Prefect server.

In order, against PREFECT_API_URL:
1. the work pool (created from deployments/work-pools/<type>.json when it does not exist yet);
2. the result storage: a `remote-file-system` block at --results (e.g. s3://bucket/prefect-results),
   made the server's default, so task results and cache records land on the object store instead of
   a worker's home folder and a retry on another machine reuses them;
3. the `gpu` tag concurrency limit (--gpu-limit), which gates every task tagged `gpu`;
4. the deployments of deployments/prefect.yaml, through `prefect deploy --all`;
5. with --enable-nightly, the nightly corpus-wide schedule of build-index is switched on;
6. the zombie-run automation: a flow run that sent no heartbeat for --crash-after seconds (its worker
   died with it) is marked Crashed, so its parent retries it and its `gpu` slots are freed; flow runs
   beat every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds (set in the pools' env, work-pools/*.json).

Every step is idempotent: running it again updates what is there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bergson_core.errors import ConfigError, UserError

POOL_TYPES = ("process", "docker", "kubernetes")
RESULTS_BLOCK = "bergson-results"
ZOMBIE_AUTOMATION = "bergson-crash-zombie-runs"
NIGHTLY_SLUG = "nightly-corpus-build"
NIGHTLY_DEFAULTS = {
    "BERGSON_NIGHTLY_INDEX": "s3://bergson/indexes/nightly",
    "BERGSON_NIGHTLY_MODEL": "/models/nightly",
    "BERGSON_NIGHTLY_DATASET": "s3://bergson/corpus/nightly.jsonl",
}


def deployments_dir() -> Path:
    """deployments/ of the checkout (or of the image: BERGSON_DEPLOYMENTS_DIR)."""
    env = os.environ.get("BERGSON_DEPLOYMENTS_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[2] / "deployments"
    return here if here.is_dir() else Path.cwd() / "deployments"


def add_arguments(parser) -> None:
    parser.add_argument("--pool", default=os.environ.get("BERGSON_WORK_POOL", "bergson"),
                        help="Work pool the deployments run on (default: $BERGSON_WORK_POOL or bergson).")
    parser.add_argument("--pool-type", choices=POOL_TYPES, default="process",
                        help="Worker type of the pool when it is created (default: process).")
    parser.add_argument("--update-pool", action="store_true",
                        help="Replace an existing pool's base job template with bergson's.")
    parser.add_argument("--results", metavar="URL", default=os.environ.get("BERGSON_RESULTS"),
                        help="Where Prefect keeps task results and cache records (e.g. s3://bucket/prefect-results); "
                             "becomes the server's default result storage. Default: $BERGSON_RESULTS, else unchanged.")
    parser.add_argument("--results-options", type=json.loads, default={}, metavar="JSON",
                        help="fsspec options of the results store, e.g. '{\"client_kwargs\": {\"endpoint_url\": ...}}'. "
                             "Leave credentials to the workers' environment (AWS_* variables, instance roles).")
    parser.add_argument("--gpu-limit", type=int, metavar="N",
                        help="At most N tasks tagged `gpu` run at once across all workers (default: unchanged).")
    parser.add_argument("--enable-nightly", action="store_true",
                        help="Switch on the nightly corpus-wide build schedule (registered disabled).")
    for var, default in NIGHTLY_DEFAULTS.items():
        flag = "--" + var.removeprefix("BERGSON_").lower().replace("_", "-")
        parser.add_argument(flag, dest=var.lower(), default=os.environ.get(var, default),
                            help=f"Parameter of the nightly build (default: ${var} or {default}).")
    parser.add_argument("--crash-after", type=int, metavar="SECONDS", default=int(os.environ.get("BERGSON_CRASH_AFTER", 120)),
                        help="Mark a flow run Crashed after this long without a heartbeat (a dead worker); "
                             "0 removes the automation (default: $BERGSON_CRASH_AFTER or 120).")
    parser.add_argument("--prefect-file", default=None,
                        help="prefect.yaml to deploy (default: deployments/prefect.yaml).")
    parser.add_argument("--skip-deployments", action="store_true",
                        help="Only set up the pool, result storage and limit.")


def run(args) -> int:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        raise ConfigError("bergson deploy needs a running Prefect server: start one with `prefect server start` "
                          "and export PREFECT_API_URL=http://HOST:4200/api")
    prefect_file = Path(args.prefect_file) if args.prefect_file else deployments_dir() / "prefect.yaml"
    if not prefect_file.is_file() and not args.skip_deployments:
        raise ConfigError(f"no prefect.yaml at {prefect_file}: pass --prefect-file or set BERGSON_DEPLOYMENTS_DIR")
    done: list[tuple[str, str]] = [("Prefect API", api)]
    with get_client(sync_client=True) as client:
        _check_api(client, api)
        done.append(("work pool", ensure_pool(client, args.pool, args.pool_type, args.update_pool)))
        if args.results:
            done.append(("result storage", ensure_results(client, args.results, args.results_options)))
        if args.gpu_limit is not None:
            done.append(("gpu limit", ensure_gpu_limit(client, args.gpu_limit)))
        if not args.skip_deployments:
            env = {k: getattr(args, k.lower()) for k in NIGHTLY_DEFAULTS}
            names = register_deployments(prefect_file, args.pool, env)
            done += [("deployment", name) for name in deployed(client, names)]
            done.append(("nightly schedule", set_nightly(client, args.enable_nightly)))
        done.append(("zombie runs", ensure_zombie_automation(client, args.crash_after)))
    _print(done, args.pool)
    return 0


def _check_api(client, api: str) -> None:
    try:
        client.api_healthcheck()
        client.read_work_pools(limit=1)
    except Exception as e:  # connection refused, DNS, TLS: one line, not a traceback
        raise UserError(f"cannot reach the Prefect API at {api}: {type(e).__name__}: {e}") from None


def load_template(pool_type: str) -> dict:
    path = deployments_dir() / "work-pools" / f"{pool_type}.json"
    with open(path) as f:
        return json.load(f)


def ensure_pool(client, name: str, pool_type: str, update: bool) -> str:
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    template = load_template(pool_type)
    try:
        pool = client.read_work_pool(name)
    except ObjectNotFound:
        client.create_work_pool(WorkPoolCreate(name=name, type=pool_type, base_job_template=template))
        return f"{name} ({pool_type}, created)"
    if update:
        if pool.type != pool_type:
            raise ConfigError(f"work pool {name!r} is a {pool.type} pool, not {pool_type}: use another --pool name")
        client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))
        return f"{name} ({pool_type}, template updated)"
    return f"{name} ({pool.type}, exists)"


def ensure_results(client, url: str, options: dict) -> str:
    """A remote-file-system block at url, made the server-wide default result storage."""
    from prefect.filesystems import RemoteFileSystem

    if "://" not in url:
        raise ConfigError(f"--results must be a URL that every worker reaches (s3://..., gs://...), got {url!r}")
    block_id = RemoteFileSystem(basepath=url.rstrip("/"), settings=options).save(
        RESULTS_BLOCK, overwrite=True, client=client)
    client.update_server_default_result_storage(block_id)
    return f"{url} (block remote-file-system/{RESULTS_BLOCK}, server default)"


def ensure_gpu_limit(client, limit: int) -> str:
    if limit < 0:
        raise ConfigError("--gpu-limit must be 0 or more")
    client.create_concurrency_limit(tag="gpu", concurrency_limit=limit)  # creates or updates
    return f"{limit} concurrent `gpu` tasks"


def register_deployments(prefect_file: Path, pool: str, nightly_env: dict) -> set[str]:
    import yaml

    env = dict(os.environ, BERGSON_WORK_POOL=pool, **nightly_env)
    exe = Path(sys.executable).with_name("prefect")
    cmd = [str(exe) if exe.exists() else "prefect", "--no-prompt", "deploy", "--all",
           "--prefect-file", str(prefect_file)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(prefect_file.parent))
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise UserError(f"`{' '.join(cmd[1:])}` failed (exit {proc.returncode}):\n{tail}")
    names = {d["name"] for d in yaml.safe_load(prefect_file.read_text()).get("deployments", [])}
    return names


def deployed(client, names: set[str]) -> list[str]:
    """flow/deployment names of the registered deployments called `names`."""
    out = []
    for dep in client.read_deployments():
        if dep.name in names:
            out.append(f"{client.read_flow(dep.flow_id).name}/{dep.name}")
    return sorted(out)


def set_nightly(client, enable: bool) -> str:
    dep = client.read_deployment_by_name("build-index/build-index")
    for sched in dep.schedules:
        if sched.slug == NIGHTLY_SLUG:
            if enable and not sched.active:
                client.update_deployment_schedule(dep.id, sched.id, active=True)
            active = enable or sched.active
            return f"build-index '{sched.schedule.cron}' {sched.schedule.timezone}: " + (
                "ACTIVE" if active else "disabled (bergson deploy --enable-nightly turns it on)")
    return "none registered"


def zombie_automation(seconds: int):
    """Prefect's recipe for runs whose process vanished: once a flow run has sent a heartbeat, expect
    another event from it (a heartbeat or a state change) within `seconds`, else mark it Crashed."""
    from datetime import timedelta

    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    return AutomationCore(
        name=ZOMBIE_AUTOMATION,
        description="bergson: mark flow runs Crashed when their heartbeats stop (the worker died).",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"}, after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.*"}, for_each={"prefect.resource.id"}, posture=Posture.Proactive,
            threshold=1, within=timedelta(seconds=seconds)),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, force=True,
                                    message=f"no heartbeat for {seconds} s: its worker died (bergson deploy --crash-after)")],
    )


def ensure_zombie_automation(client, seconds: int) -> str:
    """Create or update the zombie-run automation (one of that name); --crash-after 0 removes it."""
    if seconds < 0:
        raise ConfigError("--crash-after must be 0 or more seconds")
    existing = client.read_automations_by_name(ZOMBIE_AUTOMATION)
    if seconds == 0:
        for a in existing:
            client.delete_automation(a.id)
        return "no automation (--crash-after 0)"
    automation = zombie_automation(seconds)
    if existing:
        client.update_automation(existing[0].id, automation)
        for extra in existing[1:]:
            client.delete_automation(extra.id)
    else:
        client.create_automation(automation)
    return f"marked Crashed after {seconds} s without a heartbeat (automation {ZOMBIE_AUTOMATION})"


def _print(done: list[tuple[str, str]], pool: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="bergson deploy", show_header=False)
    for k, v in done:
        t.add_row(k, v)
    console = Console()
    console.print(t)
    console.print(f"next: start a worker with `prefect worker start --pool {pool}`, then run\n"
                  "  prefect deployment run build-index/build-index --param config='{\"index\": ..., "
                  "\"model\": ..., \"dataset\": ...}'\nor use the deployment's Run button in the dashboard.")
