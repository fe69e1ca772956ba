"""One list of deployments: prefect.yaml and `outbound serve` both come from deployments/catalog.py."""

from datetime import timedelta
from pathlib import Path

import yaml
from typer.testing import CliRunner

from deployments.catalog import DEPLOYMENTS, WORK_POOL, named, prefect_yaml
from deployments.cli import app
from deployments.serve import build_deployments

PREFECT_YAML = Path(__file__).resolve().parent.parent / "prefect.yaml"


def _declared() -> list[dict]:
    return yaml.safe_load(PREFECT_YAML.read_text())["deployments"]


def test_prefect_yaml_declares_exactly_the_catalog():
    declared = _declared()
    assert [d["name"] for d in declared] == [d.name for d in DEPLOYMENTS]
    for entry, deployment in zip(declared, DEPLOYMENTS):
        assert entry["entrypoint"] == deployment.entrypoint
        assert entry["parameters"] == deployment.parameters
        assert entry["tags"] == deployment.tags
        assert entry["description"] == deployment.description
        assert entry["work_pool"]["name"] == WORK_POOL
        schedules = entry.get("schedules", [])
        if deployment.cron:
            assert schedules == [{"cron": deployment.cron, "timezone": "UTC", "active": True}]
        elif deployment.interval:
            assert schedules == [{"interval": deployment.interval, "active": True}]
        else:
            assert schedules == []
        limit = entry.get("concurrency_limit")
        assert limit == ({"limit": deployment.concurrency, "collision_strategy": "ENQUEUE"}
                         if deployment.concurrency else None)


def test_prefect_yaml_is_the_generated_file():
    assert PREFECT_YAML.read_text() == prefect_yaml(), \
        "prefect.yaml differs from the catalog: run `outbound deployments yaml > prefect.yaml`"


def test_the_command_prints_prefect_yaml():
    result = CliRunner().invoke(app, ["deployments", "yaml"])
    assert result.exit_code == 0 and result.output == prefect_yaml()


def test_serve_builds_exactly_the_catalog():
    served = build_deployments("/etc/outbound.yaml")
    assert [d.name for d in served] == [d.name for d in DEPLOYMENTS]
    for runner, deployment in zip(served, DEPLOYMENTS):
        assert runner.entrypoint.endswith(deployment.entrypoint)
        assert runner.parameters == {"config_path": "/etc/outbound.yaml", **deployment.parameters}
        assert runner.tags == deployment.tags
        assert runner.description == deployment.description
        schedules = [s.schedule for s in runner.schedules]
        if deployment.on_demand_when_served:  # started by the serve process when work is due
            assert schedules == []
        elif deployment.cron:
            assert [(s.cron, s.timezone) for s in schedules] == [(deployment.cron, "UTC")]
        elif deployment.interval:
            assert [s.interval for s in schedules] == [timedelta(seconds=deployment.interval)]
        else:
            assert schedules == []
        assert runner.concurrency_limit == deployment.concurrency
        if deployment.concurrency:
            assert runner.concurrency_options.collision_strategy == "ENQUEUE"


def test_serve_options_move_the_nightly_reconciliation_and_the_sweep():
    served = {d.name: d for d in build_deployments(reconcile_cron="15 1 * * *", sweep_after_seconds=120)}
    assert served["reconcile-all"].schedules[0].schedule.cron == "15 1 * * *"
    assert served["sweep-events"].parameters == {"older_than_seconds": 120}
    assert served["prune-state"].schedules[0].schedule.cron == named("prune-state").cron
