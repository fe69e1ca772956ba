"""Serve every deployment of the catalog from one process (`outbound serve`), schedules and triggers included.

For a single-machine installation that needs no work pool: the Prefect server still records and
shows every run. `drain-events` is not scheduled here: the serve process looks at the outbox every
second (one indexed count, no flow run) and starts a drain-events run only when events are due and
no drainer is running or queued; the run then watches the outbox for its 75 s, so a burst is
provisioned in batches within a poll interval. At rest no run is made (a run a minute made ~1,440
empty runs a day).
"""

import importlib
import logging
import threading
from dataclasses import replace
from typing import Optional

from deployments.catalog import DEPLOYMENTS, Deployment

log = logging.getLogger("outbound.serve")


def runner_deployment(deployment: Deployment, config_path: Optional[str] = None):
    """The RunnerDeployment of one catalog entry (with the configuration file as a parameter, when given)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.schedules import Cron, Interval

    flow = getattr(importlib.import_module(deployment.module), deployment.function)
    schedule = (None if deployment.on_demand_when_served  # DrainDispatcher starts its runs
                else Cron(deployment.cron, timezone="UTC") if deployment.cron
                else Interval(deployment.interval) if deployment.interval else None)
    concurrency = (ConcurrencyLimitConfig(limit=deployment.concurrency, collision_strategy="ENQUEUE")
                   if deployment.concurrency else None)
    params = {"config_path": config_path} if config_path else {}
    return flow.to_deployment(name=deployment.name, schedule=schedule, concurrency_limit=concurrency,
                              parameters={**params, **deployment.parameters}, tags=deployment.tags,
                              description=deployment.description)


def build_deployments(config_path: Optional[str] = None, reconcile_cron: Optional[str] = None,
                      sweep_after_seconds: Optional[float] = None) -> list:
    """The RunnerDeployments of the catalog; `outbound serve`'s options may move reconcile-all and the sweep."""
    chosen = []
    for deployment in DEPLOYMENTS:
        if deployment.name == "reconcile-all" and reconcile_cron:
            deployment = replace(deployment, cron=reconcile_cron)
        if deployment.name == "sweep-events" and sweep_after_seconds is not None:
            deployment = replace(deployment, parameters={**deployment.parameters,
                                                         "older_than_seconds": sweep_after_seconds})
        chosen.append(runner_deployment(deployment, config_path))
    return chosen


class DrainDispatcher:
    """Start a run of the drain-events deployment when the outbox has due work and no drainer is active.

    The check for work is the drainer's own (`waiting_count`: events accepted, and retries come due),
    made before any flow run exists; Prefect is asked about drainers only when work waits.
    """

    ACTIVE = ("SCHEDULED", "PENDING", "RUNNING")  # a drainer that is, or soon will be, watching

    def __init__(self, deployment: str = "drain-events/drain-events", look_every: float = 1.0):
        self.deployment, self.look_every = deployment, look_every
        self._complained: Optional[str] = None

    def tick(self) -> Optional[str]:
        """One look: the id of the drain-events run started, or None (nothing due, or a drainer active)."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter,
                                                    FlowRunFilterState, FlowRunFilterStateType)
        from prefect.client.schemas.objects import StateType

        from models.outbox import waiting_count

        if not waiting_count():
            return None
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(self.deployment)
            active = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                    any_=[StateType(s) for s in self.ACTIVE]))), limit=1)
            if active:
                return None
            return str(client.create_flow_run_from_deployment(deployment.id).id)

    def run(self, stop: threading.Event) -> None:
        """Look every `look_every` seconds until `stop` is set; a failed look is logged once and tried again."""
        while not stop.wait(self.look_every):
            try:
                started = self.tick()
            except Exception as exc:  # the store or Prefect is away (or serve has not registered yet)
                what = f"{type(exc).__name__}: {exc}"
                if what != self._complained:
                    log.warning("drain-events not started: %s; looking again every %gs", what, self.look_every)
                self._complained = what
                continue
            self._complained = None
            if started:
                log.info("events are due: started drain-events run %s", started)


def serve_all(config_path: Optional[str] = None, limit: Optional[int] = None, **kwargs) -> None:
    """Register the deployments with the Prefect server and run their flows from this process; start
    drain-events runs when work is due."""
    from prefect import serve

    from flows.warm import warm_up

    warm_up()  # the dispatcher's thread builds nothing at run time (CPython gh-106905; flows/warm.py)
    stop = threading.Event()
    looker = threading.Thread(target=DrainDispatcher().run, args=(stop,), name="drain-dispatcher", daemon=True)
    looker.start()
    try:
        # The runner looks for runs to start every second, so a started drainer begins within ~2 s.
        serve(*build_deployments(config_path, **kwargs), limit=limit, query_seconds=1)
    finally:
        stop.set()
