"""Issue 12 item 11: `bergson deploy` ships the automation that marks a flow run Crashed when its
heartbeats stop (its worker died), read back from a real `prefect server` and seen at work there."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone

from flows.commands.deploy import ZOMBIE_AUTOMATION, ensure_zombie_automation

from .conftest import wait_until


def test_deploy_creates_the_zombie_run_automation(deployed, prefect_client):
    (auto,) = prefect_client.read_automations_by_name(ZOMBIE_AUTOMATION)
    trigger = auto.trigger
    assert auto.enabled and trigger.posture == "Proactive"
    assert trigger.after == {"prefect.flow-run.heartbeat"} and trigger.expect == {"prefect.flow-run.*"}
    assert trigger.for_each == {"prefect.resource.id"} and trigger.within.total_seconds() == 120
    (action,) = auto.actions
    assert action.type == "change-flow-run-state" and action.state.value == "CRASHED"
    pool = prefect_client.read_work_pool(deployed["pool"])  # flow runs on the pool send the heartbeats it watches
    assert pool.base_job_template["variables"]["properties"]["env"]["default"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]


def _heartbeat(client, run_id) -> None:
    event = {"id": str(uuid.uuid4()), "occurred": datetime.now(timezone.utc).isoformat(),
             "event": "prefect.flow-run.heartbeat", "resource": {"prefect.resource.id": f"prefect.flow-run.{run_id}"}}
    client._client.post("/events", json=[event]).raise_for_status()


def test_a_run_whose_heartbeats_stop_is_marked_crashed(deployed, prefect_client):
    from prefect import flow
    from prefect.states import Running

    @flow(name="zombie-probe")
    def probe():
        pass

    ensure_zombie_automation(prefect_client, 10)  # the deployed one, with Prefect's shortest window
    try:
        time.sleep(2)  # the triggers service loads the changed automation
        dead, alive = (prefect_client.create_flow_run(probe, state=Running()) for _ in range(2))
        for run in (dead, alive):
            _heartbeat(prefect_client, run.id)

        def crashed():
            _heartbeat(prefect_client, alive.id)  # this one keeps beating
            return prefect_client.read_flow_run(dead.id).state.is_crashed()

        wait_until(crashed, 120, "the run without heartbeats to be marked Crashed", interval=1)
        assert prefect_client.read_flow_run(alive.id).state.is_running()
        assert "no heartbeat for 10 s" in prefect_client.read_flow_run(dead.id).state.message
    finally:
        ensure_zombie_automation(prefect_client, 120)
