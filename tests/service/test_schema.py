"""The deployments' parameter schema (the dashboard's run form) comes from the pydantic configs:
good input passes, bad input is rejected with a message per field, by the dashboard's validation
endpoint, by the API when a run is created, and by the flow itself."""

from __future__ import annotations

import datetime

import pytest

GOOD_BUILD = {"config": {"index": "s3://bucket/indexes/a", "model": "/models/m", "dataset": "s3://bucket/c.jsonl",
                         "shard_size": 500, "projection_dim": 8, "include": ["*.mlp.*"]}}
BAD_BUILD = {"config": {"index": 5, "shard_size": 0, "dtype": "float8", "projection_type": "uniform",
                        "bogus": 1}}
BAD_FIELDS = {"index", "shard_size", "dtype", "projection_type"}


def _field_errors(errors: list) -> dict[str, list[str]]:
    """The UI endpoint's nested {property, errors} tree -> {'config.shard_size': [...], ...}."""
    out: dict[str, list[str]] = {}

    def walk(items, prefix):
        for e in items:
            if isinstance(e, str):
                out.setdefault(prefix, []).append(e)
            else:
                walk(e["errors"], f"{prefix}.{e['property']}" if prefix else str(e["property"]))

    walk(errors, "")
    return out


def test_schema_offline_from_the_flow_signature():
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate

    from flows.build import build_index
    from flows.score import score

    schema = parameter_schema(build_index).model_dump_for_openapi()
    props = schema["definitions"]["BuildConfig"]["properties"]
    assert props["shard_size"]["exclusiveMinimum"] == 0 and "Documents per gradient shard" in props["shard_size"][
        "description"]
    assert validate(GOOD_BUILD, schema) == []
    errors = validate(BAD_BUILD, schema)
    paths = {".".join(map(str, e.path)) for e in errors}
    assert {f"config.{f}" for f in BAD_FIELDS} <= paths
    assert any("bogus" in e.message for e in errors)

    score_schema = parameter_schema(score).model_dump_for_openapi()
    bad = validate({"config": {"index": "i", "queries": "q", "top_k": 0, "metric": "dot"}}, score_schema)
    assert {".".join(map(str, e.path)) for e in bad} == {"config.top_k", "config.metric"}
    missing = validate({"config": {"index": "i"}}, score_schema)
    assert any("'queries' is a required property" in e.message for e in missing)


def test_flow_rejects_bad_config_with_field_messages():
    from bergson_core.config import BuildConfig
    from bergson_core.errors import ConfigError
    from flows.options import validate

    with pytest.raises(ConfigError) as e:
        validate(BuildConfig, BAD_BUILD["config"])
    msg = str(e.value)
    assert "--shard-size" in msg and "--dtype" in msg and "unknown option 'bogus'" in msg


def test_dashboard_form_validation_on_the_server(deployed, prefect_client):
    build = prefect_client.read_deployment_by_name("build-index/build-index")
    check = lambda values: prefect_client._client.post(  # noqa: E731  (the endpoint the run form calls)
        "/ui/schemas/validate", json={"schema": build.parameter_openapi_schema, "values": values}).json()
    assert check(GOOD_BUILD) == {"valid": True, "errors": []}
    result = check(BAD_BUILD)
    assert result["valid"] is False
    fields = _field_errors(result["errors"])
    assert {f"config.{f}" for f in BAD_FIELDS} <= set(fields)
    assert "0 is less than or equal to the minimum of 0" in fields["config.shard_size"][0]
    assert any("'bogus' was unexpected" in m for m in fields["config"])


def test_api_refuses_bad_parameters_when_a_run_is_created(deployed, prefect_client):
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.states import Scheduled

    build = prefect_client.read_deployment_by_name("build-index/build-index")
    with pytest.raises(PrefectHTTPStatusError) as e:
        prefect_client.create_flow_run_from_deployment(build.id, parameters={"config": {"index": "i",
                                                                                         "shard_size": -37}})
    assert e.value.response.status_code == 409
    assert "shard_size" in e.value.response.text and "-37" in e.value.response.text
    # good parameters are accepted (scheduled far ahead so no worker picks the run up, then removed)
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
    run = prefect_client.create_flow_run_from_deployment(build.id, parameters=GOOD_BUILD,
                                                         state=Scheduled(scheduled_time=later))
    assert run.parameters == GOOD_BUILD
    prefect_client.delete_flow_run(run.id)
