"""`outbound serve` at rest makes no drain-events run: the serve process looks at the outbox first
(one count, no flow run) and starts a run of the deployment only when work is due and no drainer is
running or queued. Read back through the Prefect client."""

import uuid

import pytest

from deployments.catalog import named
from deployments.serve import DrainDispatcher, runner_deployment
from helpers import event, write_config

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _drainer_runs(deployment_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def test_the_served_drainer_runs_only_when_work_is_due(tmp_path, sqlite_url, scim):
    from prefect.client.orchestration import get_client

    from models.config import load_config
    from models.ingest import accept

    config = write_config(tmp_path, scim)
    served = runner_deployment(named("drain-events"), str(config))
    assert served.schedules == []  # no run a minute
    deployment_id = served.apply()
    dispatcher = DrainDispatcher()
    try:
        for _ in range(3):  # at rest: looks, and makes no run
            assert dispatcher.tick() is None
        assert _drainer_runs(deployment_id) == []

        accept(event(username=f"due{uuid.uuid4().hex[:6]}"), load_config(config))
        started = dispatcher.tick()
        assert started is not None
        runs = _drainer_runs(deployment_id)
        assert [str(r.id) for r in runs] == [started] and runs[0].state_type.value == "SCHEDULED"
        assert {"trigger:event"} <= set(runs[0].tags)
        assert dispatcher.tick() is None  # one drainer queued: the work is its, no second run
        assert len(_drainer_runs(deployment_id)) == 1
    finally:
        with get_client(sync_client=True) as client:
            for run in _drainer_runs(deployment_id):
                client.delete_flow_run(run.id)
            client.delete_deployment(deployment_id)
